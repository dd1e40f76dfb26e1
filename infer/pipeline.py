"""One decoded batch through the stages — regions → embed → search (→ verify) for each index, then decide — each timed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from markguard.checkpoint import CARD, DEFAULT_MODEL_DIR
from markguard.errors import MarkguardError
from markguard.infer.decide import Policy, decide_rows
from markguard.infer.decode import Batch, finish_decode, model_input
from markguard.infer.looks import second_look, with_looks
from markguard.infer.pyramid import first_look
from markguard.infer.regions import RegionMode
from markguard.infer.results import Match, ScanRow
from markguard.infer.search import search_batch
from markguard.infer.searchers import Searcher
from markguard.preprocess import LOOK_DEFAULTS


@dataclass
class ScanOptions:
    """What the command line chooses for a scan (the model cards choose the rest)."""

    regions: str | None = None  # None: the model card's region mode
    batch_size: int = 16
    workers: int = 1
    device: str = "cpu"
    precision: str = "auto"
    k: int = 3
    max_matches: int = 5
    flag: float | None = None
    review: float | None = None
    shard: tuple[int, int] | None = None
    verify: bool | None = None  # geometric check of the candidates near the thresholds (infer/verify.py); None: when OpenCV is installed
    # the gate (infer/verify.py plan): candidates are verified from this value on (the thresholds' units);
    # None: from the review threshold less VerifyConfig.near
    verify_from: float | None = None
    backend: str = "torch"  # torch | onnx | torchscript (infer/backends.py)
    engine: str = "local"  # local | ray (infer/ray_engine.py)
    address: str | None = None  # Ray cluster address; None starts a local instance
    actors: int | None = None  # Ray: model-holding actors (default: one per GPU, or one per 2 CPUs)
    decode: str = "auto"  # cpu (Pillow, in the loader workers) | device (JPEGs by torchvision.io on the model's device) | auto
    compile: str | None = None  # a torch.compile backend for the backbone ("inductor"); None: eager
    ocr: bool = False  # read each photo's text where its detector finds it (infer/ocr.py) and match it to the brands' names
    ocr_budget: int = 2  # text lines OCR reads in each photo, where its detector finds text (per photo: a row never depends on its batch)
    looks: int | None = None  # second looks per photo (infer/looks.py); None: the model card's regions.looks.per_photo
    looks_per_batch: int | None = None  # at most this many second looks a batch; None: the card's
    # the evidence combiner (infer/combine.py) whose probability the thresholds apply to: a combiner.json,
    # "auto" (the first index's, when it has one) or None (thresholds on the similarity)
    combiner: str | None = "auto"
    flood_share: float = 0.02  # flood guard (infer/flood.py): flags of a reference past this share of the scan held as review; 0: off
    flood_min: int = 20  # ... never below this many flags of the reference
    flood_history: list[str] = field(default_factory=list)  # earlier scans' output folders: each reference's usual flags per photo
    keep_embeddings: str | None = None  # fp16 | pq: store each photo's searched regions for `markguard rematch` (infer/rematch.py)


STAGES = ("decode", "regions", "embed", "look", "search", "verify", "decide", "write")  # always reported, in this order


@dataclass
class StageTimes:
    """Seconds spent in each stage; a stage not in STAGES is added the first time it is timed."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - t0
        return now

    def merge(self, seconds: dict[str, float]) -> None:
        for k, v in seconds.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + v


def resolve_decode(decode: str, device: str) -> str:
    """auto: JPEGs decode on the GPU when the model runs on one (nvJPEG), else on the CPU with Pillow."""
    if decode == "auto":
        return "device" if device.startswith("cuda") else "cpu"
    if decode not in ("cpu", "device"):
        raise MarkguardError(f"unknown decode {decode!r}; choose cpu, device or auto")
    return decode


def region_mode(s: Searcher, opts: ScanOptions) -> RegionMode:
    """The region mode a searcher scans with: ``--regions`` if given, else its model card's ``regions.mode``."""
    if opts.regions:
        return RegionMode.named(opts.regions)
    card_file = (s.model_dir or DEFAULT_MODEL_DIR) / CARD
    return RegionMode.named(s.prep.regions.mode, f"{card_file}: field regions.mode")


def look_settings(s: Searcher, opts: ScanOptions):
    """The second looks a searcher's model takes: its card's ``regions.looks``, with ``--looks`` over it."""
    looks = s.prep.looks.replace(per_photo=opts.looks, per_batch=opts.looks_per_batch)
    if looks.per_photo < 0 or looks.per_batch < 1:
        raise MarkguardError(f"--looks {looks.per_photo} / --looks-per-batch {looks.per_batch}: give 0 or more looks a photo "
                             "and at least 1 a batch")
    if looks.per_photo and getattr(s.model, "proposal_head", None) is None:
        raise MarkguardError(f"--looks {looks.per_photo}: the model in {s.model_dir or DEFAULT_MODEL_DIR} has no proposal head "
                             "to choose where to look; scan with --looks 0")
    return looks


VERIFY_RESOLUTION = LOOK_DEFAULTS["resolution"]  # keypoints are found in the photo at up to this long side, not the scan size


def hires_needed(searchers: list[Searcher], opts: ScanOptions) -> int:
    """The long side the decoded photos are kept at for second looks and verification (0: neither needs them)."""
    looks = max((lk.resolution for lk in (look_settings(s, opts) for s in searchers) if lk.per_photo), default=0)
    return max(looks, VERIFY_RESOLUTION) if opts.verify else looks


def verify_gate(found: list[list[Match]], policy: Policy, opts: ScanOptions):
    """The verification plan for one index's matches (infer/verify.py ``plan``): each match's value before
    verification — the combiner's probability without geometry, or the similarity — against its review threshold."""
    from markguard.infer.verify import VerifyConfig, plan

    cfg = VerifyConfig()
    if policy.combiner is not None:
        from dataclasses import replace

        from markguard.infer.evidence import candidate_from_json

        before = replace(policy.combiner, absent=tuple({*policy.combiner.absent, "geometry"}))
        values = [before.probabilities([candidate_from_json(m.to_json()) for m in ms]).tolist() for ms in found]
    else:
        values = [[float(m.score) for m in ms] for ms in found]
    if opts.verify_from is not None:
        floors = [[opts.verify_from + cfg.near] * len(ms) for ms in found]
    else:
        floors = [[policy.thresholds(m.brand, m.index)[1] for m in ms] for ms in found]
    return cfg, plan(values, floors, cfg, [[m.box is not None for m in ms] for ms in found])


_READERS: dict[int, object] = {}  # one OCR reader (one loaded engine) per budget, per process
_LEXICONS: dict[tuple, object] = {}


def _text_evidence(batch: Batch, per_photo: list[list[Match]], searchers: list[Searcher], opts: ScanOptions) -> None:
    """Read the gated photos' best regions (originals, decoded again only for those) and put each match's evidence on it."""
    from markguard.infer.evidence import collect
    from markguard.infer.ocr import HiresPhotos, OcrConfig, OcrReader, OriginalPhotos
    from markguard.infer.textmatch import Lexicon

    brands = {b: m for s in searchers for b, m in s.brands.items()}
    key = tuple(sorted((b, str(m.get("name")), tuple(m.get("aliases") or ()), tuple(m.get("wordmarks") or ())) for b, m in brands.items()))
    if key not in _LEXICONS:
        _LEXICONS.clear()
        _LEXICONS[key] = Lexicon.from_brands(brands)
    if opts.ocr_budget not in _READERS:
        _READERS[opts.ocr_budget] = OcrReader(OcrConfig(lines=opts.ocr_budget))
    # the copy kept for looks and verification when there is one, else the originals decoded again
    photos = (HiresPhotos(batch.hires, batch.hires_to_orig) if batch.hires is not None
              else OriginalPhotos([batch.items[pos] for pos in batch.ok]))
    cands = collect(photos, per_photo, lexicon=_LEXICONS[key], reader=_READERS[opts.ocr_budget], read_unmatched=False)
    for matches, cs in zip(per_photo, cands):
        # candidates keep the matches' order, then come those only the text found (a brand it names that no region
        # matched): a match of their own, with no mark and no similarity (score 0), that a combiner with the text
        # signal can flag; decided on similarity alone, it stays below any usual threshold
        for m, c in zip(matches, cs):
            m.evidence = c.evidence_json()
        matches.extend(Match(c.brand, None, 0.0, c.box, None, c.evidence_json()) for c in cs[len(matches):])


def process_batch(batch: Batch, searchers: list[Searcher], policy: Policy, opts: ScanOptions, times: StageTimes) -> list[ScanRow]:
    """One decoded batch through regions → embed → search (→ verify) for each index, then decide; each stage timed."""
    t = time.perf_counter()
    if batch.pending:  # JPEGs left to decode on the model's device
        finish_decode(batch, size=max(s.prep.scan_size for s in searchers), device=opts.device, hires=hires_needed(searchers, opts))
        t = times.add("decode", t)
    per_photo: list[list[Match]] = [[] for _ in batch.ok]
    kept: list[list] = [[] for _ in batch.ok]
    for s in searchers:
        if not batch.ok:
            break
        mode = region_mode(s, opts)
        inp = model_input(batch, s.prep)
        t = times.add("decode", t)
        # one backbone pass a scale of the card's pyramid (infer/pyramid.py); the regions are pooled from them
        first = first_look(s.model, s.card, s.prep, mode, inp, device=opts.device, precision=opts.precision, tick=times.add)
        t = time.perf_counter()
        emb, photo_boxes, fmap = first.emb, first.photo_boxes, first.fmap
        looks = look_settings(s, opts)
        if looks.per_photo:
            if fmap is None:
                raise MarkguardError(f"--looks {looks.per_photo} (second looks: the model card asks for them unless --looks is given) needs the first look's feature map, "
                                     "which --regions tiles does not make; add --looks 0")
            extra = second_look(s.model, s.prep, batch, first.inp, fmap, looks, device=opts.device, precision=opts.precision)
            emb, photo_boxes = with_looks(emb, photo_boxes, extra)
            t = times.add("look", t)
        vectors = emb.vectors.float().cpu().numpy()
        if opts.keep_embeddings:
            from markguard.infer.rematch import keep_regions

            keep_regions(kept, s.name, vectors, emb.counts, photo_boxes)
        found = search_batch(s.index, vectors, emb.counts, photo_boxes, k=opts.k,
                             max_matches=opts.max_matches, index_name=s.name or None, bias=s.bias)
        t = times.add("search", t)
        if opts.verify:
            from markguard.infer.verify import verify_matches

            cfg, checks = verify_gate(found, policy, opts)
            found = verify_matches(inp.x, found, s, inp.to_orig, inp.factor, cfg, orig_size=inp.orig_size, checks=checks,
                                   hires=batch.hires, hires_to_orig=batch.hires_to_orig)
            t = times.add("verify", t)
        for i, matches in enumerate(found):
            per_photo[i].extend(matches)
    if opts.ocr:
        _text_evidence(batch, per_photo, searchers, opts)
        t = times.add("evidence", t)
    rows = decide_rows(batch, per_photo, policy, opts.max_matches)
    if opts.keep_embeddings:
        from markguard.infer.rematch import attach_regions

        attach_regions(rows, batch.ok, kept)
    times.add("decide", t)
    return rows

