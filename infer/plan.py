"""The scan plan: everything a scan decides once, before its first batch — each index's resolved preprocessing,
region method, first-look scales and second looks; the decode size; the verification and OCR settings; and the
list of stages every batch goes through (infer/stages.py), with the producers of the evidence signals the scan
collects (infer/evidence.py ``SIGNALS``). ``process_batch`` (infer/pipeline.py) only loops over that list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from markguard.checkpoint import CARD, DEFAULT_MODEL_DIR
from markguard.errors import MarkguardError
from markguard.infer.options import ScanOptions, resolve_decode
from markguard.infer.regions import RegionMode
from markguard.preprocess import LOOK_DEFAULTS, LookSettings, Preprocessing, RegionSettings

VERIFY_RESOLUTION = LOOK_DEFAULTS["resolution"]  # keypoints are found in the photo at up to this long side, not the scan size


def region_mode(s, opts: ScanOptions) -> RegionMode:
    """The region mode a searcher scans with: ``--regions`` if given, else its model card's ``regions.mode``."""
    if opts.regions:
        return RegionMode.named(opts.regions)
    card_file = (s.model_dir or DEFAULT_MODEL_DIR) / CARD
    return RegionMode.named(s.prep.regions.mode, f"{card_file}: field regions.mode")


def look_settings(s, opts: ScanOptions) -> LookSettings:
    """The second looks a searcher's model takes: its card's ``regions.looks``, with ``--looks`` over it."""
    looks = s.prep.looks.replace(per_photo=opts.looks, per_batch=opts.looks_per_batch)
    if looks.per_photo < 0 or looks.per_batch < 1:
        raise MarkguardError(f"--looks {looks.per_photo} / --looks-per-batch {looks.per_batch}: give 0 or more looks a photo "
                             "and at least 1 a batch")
    if looks.per_photo and getattr(s.model, "proposal_head", None) is None:
        raise MarkguardError(f"--looks {looks.per_photo}: the model in {s.model_dir or DEFAULT_MODEL_DIR} has no proposal head "
                             "to choose where to look; scan with --looks 0")
    return looks


@dataclass(frozen=True)
class SearcherPlan:
    """One index and its model as every batch uses them: settings resolved from its card and the options, once."""

    pos: int  # its place among the scan's indexes (matches are gathered in this order)
    searcher: object  # infer.searchers.Searcher
    prep: Preprocessing
    mode: RegionMode
    regions: RegionSettings  # the first look's region settings: its scales and overlap
    looks: LookSettings  # per_photo 0: no second look

    @property
    def model(self):
        return self.searcher.model


@dataclass
class ScanPlan:
    """A scan resolved once; ``stages`` run in order on every batch."""

    searchers: tuple[SearcherPlan, ...]
    policy: object  # infer.decide.Policy
    opts: ScanOptions
    size: int  # photos are decoded letterboxed to this side (the largest scan size); each model's input is made from it
    mean: tuple[float, ...]  # and normalised as the first model wants (model_input renormalises for the others)
    std: tuple[float, ...]
    hires: int  # long side of the photo copy the decode workers keep for every photo (second looks; 0: none)
    verify_hires: int  # the copy's long side when verification decodes it itself, for the photos it checks (hires 0)
    verify: object | None  # infer.verify.VerifyConfig, None without verification
    ocr: object | None  # infer.ocr.OcrConfig, None without OCR
    signals: tuple[str, ...] = ()  # the evidence signals whose producers run
    stages: list = field(default_factory=list)

    @property
    def model_stages(self) -> int:
        """How many of ``stages``, from the first, are the model's own (regions, embedding, second looks, search):
        the next batch runs through them while the rest (evidence, decision) finish this one."""
        n = 0
        while n < len(self.stages) and getattr(self.stages[n], "model_stage", False):
            n += 1
        return n


def _signals(searchers: list, opts: ScanOptions) -> list[str]:
    from markguard.infer.evidence import SIGNALS

    known = [n for n, s in SIGNALS.items() if s.opt_in]
    unknown = [n for n in opts.signals if n not in known]
    if unknown:
        raise MarkguardError(f"--signal {', '.join(unknown)}: unknown; choose from {', '.join(known) or 'none (no optional signal is installed)'}")
    return [n for n, s in SIGNALS.items()
            if s.producer is not None and s.collected(opts, searchers) and (not s.opt_in or n in opts.signals)]


def producer(name: str, plan: ScanPlan, sp: SearcherPlan | None):
    """The stage that produces signal ``name``, built for this plan (and index)."""
    import importlib

    from markguard.infer.evidence import SIGNALS

    ref = SIGNALS[name].producer
    if isinstance(ref, str):
        module, _, cls = ref.partition(":")
        ref = getattr(importlib.import_module(module), cls)
    return ref.plan(plan, sp)


def build_plan(searchers: list, policy, opts: ScanOptions) -> ScanPlan:
    """Resolve the scan once: a bad region mode or look setting fails here, in the main process, before any batch."""
    from markguard.infer import stages
    from markguard.infer.evidence import SIGNALS

    sps = []
    for pos, s in enumerate(searchers):
        mode, looks = region_mode(s, opts), look_settings(s, opts)
        if looks.per_photo and mode.value.embed != "pool":
            raise MarkguardError(f"--looks {looks.per_photo} (second looks: the model card asks for them unless --looks is given) needs the first "
                                 f"look's feature map, which --regions {mode.label} does not make; add --looks 0")
        sps.append(SearcherPlan(pos, s, s.prep, mode, s.prep.regions, looks))
    look_res = max((sp.looks.resolution for sp in sps if sp.looks.per_photo), default=0)
    verify = ocr = None
    if opts.verify:
        from markguard.infer.verify import VerifyConfig

        verify = VerifyConfig()
    if opts.ocr:
        from markguard.infer.ocr import OcrConfig

        ocr = OcrConfig(lines=opts.ocr_budget)
    first = sps[0].prep
    plan = ScanPlan(tuple(sps), policy, opts, size=max(sp.prep.scan_size for sp in sps), mean=first.mean, std=first.std,
                    # second looks need every photo's copy; verification alone only those of photos with a candidate near the
                    # gate: it decodes them itself (the same pixels), and the workers decode at the scan size only
                    hires=(max(look_res, VERIFY_RESOLUTION) if verify else look_res) if look_res else 0,
                    verify_hires=VERIFY_RESOLUTION, verify=verify, ocr=ocr,
                    signals=tuple(_signals(searchers, opts)))
    per_index = [n for n in plan.signals if SIGNALS[n].per_index]
    per_batch = [n for n in plan.signals if not SIGNALS[n].per_index]
    if resolve_decode(opts.decode, opts.device) == "device":
        plan.stages.append(stages.DeviceDecode.plan(plan))
    for sp in sps:
        plan.stages.append(stages.FirstLook.plan(plan, sp))
        if sp.looks.per_photo:
            plan.stages.append(stages.SecondLook.plan(plan, sp))
        plan.stages.append(stages.Search.plan(plan, sp))
        plan.stages += [producer(n, plan, sp) for n in per_index]
    plan.stages += [producer(n, plan, None) for n in per_batch]
    plan.stages.append(stages.Decide.plan(plan))
    if opts.keep_embeddings:
        plan.stages.append(stages.KeepRegions())
    return plan
