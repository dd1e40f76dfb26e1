"""The training configuration: defaults here, a YAML recipe on top, command-line overrides last."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from markguard.datasets.trainsets import READERS
from markguard.checkpoint import ModelShape
from markguard.errors import MarkguardError
from markguard.model import Pooling
from markguard.train.losses import Loss

OPTIMIZERS = ("adamw", "sgd")
SAMPLERS = ("m_per_class", "random")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig(ModelShape):
    """What a run trains (the model's shape: backbone, dim, pooling, ... from ModelShape) and how."""

    # data
    gallery: str | None = None  # marks to learn, in the gallery layout (brand folders)
    backgrounds: str | None = None  # folders of photos to paste marks into (comma-separated); procedural when unset
    p_photo: float = 1.0  # share of backgrounds drawn from those photos (the rest procedural)
    exclude_brands: str | None = None  # a file of brand ids kept out of training (the evaluation's brands), one a line
    holdout_brands: int = 0  # the last N brands (sorted) are kept out of training for open-set evaluation
    trainset: str | None = None  # real labelled photos instead of a gallery (SOP, Products-10K, class folders)
    trainset_format: str = "auto"  # a reader in markguard.datasets.trainsets.READERS, or auto
    drop_small_classes: bool = False  # leave out trainset classes with fewer than m_per_class images instead of refusing
    # model (beside ModelShape's fields)
    pretrained: bool = False
    weights: str | None = None  # a local weights file for the backbone
    init: str | None = None  # backbone start: an installed package (efficientnet-lite0) or a .safetensors/.pth file
    freeze_stages: int = 0  # stem and the first N backbone stages stay fixed (pretrained low-level features; faster on CPUs)
    # objective
    loss: str = "cosface"
    loss_kwargs: dict = field(default_factory=dict)
    background_class: bool = True  # regions without a mark form one more class, pushed away from every mark
    proposals: dict = field(default_factory=dict)  # settings of the learned proposal head; empty = no head
    looks: int = 0  # second looks a photo the card asks scans for (infer/looks.py); needs the proposal head
    proposal_weight: float = 1.0
    sampler: str = "m_per_class"
    m_per_class: int = 4
    # composites
    p_clean: float = 0.3
    p_background: float = 0.1
    scale: tuple[float, float] = (0.3, 0.9)
    strength: float = 1.0
    loose_boxes: float = 0.5  # share of pasted marks pooled from a loose window, as the scan's grid sees them
    p_recolour: float = 0.0  # share of pasted marks recoloured: palette, gradient, two-tone, inverted, on a badge
    p_negative: float = 0.0  # share of background samples showing a generic shape or plain text (hard negatives)
    p_fill: float = 0.0  # share of pasted marks alone, edge to edge (datasets/composite.py)
    p_cut: float = 0.0  # share of pasted marks cut by the crop's border
    p_multi: float = 0.0  # share of pasted marks with other marks beside them
    # optimisation
    batch_size: int = 64
    grad_accum: int = 1
    steps: int = 1000
    optimizer: str = "adamw"
    lr: float = 1e-3
    loss_lr: float = 1e-2  # proxies learn faster than the backbone
    weight_decay: float = 0.05
    warmup_steps: int = 50
    clip_grad: float = 1.0
    ema: float = 0.0  # EMA decay of the weights (0 = off); the EMA weights are the ones saved
    precision: str = "auto"  # bf16 autocast on CUDA; fp32 on CPUs without fast bf16
    channels_last: bool = True
    compile: str | None = None  # a torch.compile backend for the backbone ("inductor" on a GPU); None: eager
    device: str = "auto"
    workers: int = 2
    threads: int = 0  # torch threads on CPU; 0 = torch's default (all cores); 1 on a machine shared with other jobs
    seed: int = 0
    # bookkeeping
    log_every: int = 20
    tensorboard: bool = False  # also write scalars to OUT/tensorboard (needs the tensorboard package)
    checkpoint_every: int = 200
    # calibration of the scan thresholds after training
    calibrate: bool = True
    calib_listings: int = 120
    target_fpr: float = 0.01

    def validate(self) -> None:
        def one_of(key, allowed):
            if getattr(self, key) not in allowed:
                raise MarkguardError(f"{key}={getattr(self, key)!r} is not allowed; choose one of {', '.join(map(str, allowed))}")

        one_of("loss", [m.name for m in Loss])
        Loss[self.loss].value.check_kwargs(self.loss, self.loss_kwargs)
        one_of("pooling", [m.name for m in Pooling])
        one_of("optimizer", OPTIMIZERS)
        one_of("sampler", SAMPLERS)
        one_of("device", DEVICES)
        one_of("precision", PRECISIONS)
        one_of("trainset_format", ["auto", *READERS])
        if self.gallery and self.trainset:
            raise MarkguardError("gallery= and trainset= are both set; train on one: gallery (marks composited into photos) or trainset (labelled photos)")
        for key in ("batch_size", "steps", "input_size", "scan_size", "dim", "m_per_class", "grad_accum", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                raise MarkguardError(f"{key}={getattr(self, key)} must be at least 1")
        if self.sampler == "m_per_class" and self.batch_size % self.m_per_class:
            raise MarkguardError(f"batch_size={self.batch_size} must be a multiple of m_per_class={self.m_per_class}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise MarkguardError(f"scale={list(self.scale)} must be [low, high] with 0 < low <= high <= 1")
        for key in ("p_photo", "p_recolour", "p_negative", "p_clean", "p_background", "loose_boxes", "p_fill", "p_cut", "p_multi"):
            if not 0 <= getattr(self, key) <= 1:
                raise MarkguardError(f"{key}={getattr(self, key)} must be a share between 0 and 1")
        if self.p_fill + self.p_cut > 1:
            raise MarkguardError(f"p_fill={self.p_fill} and p_cut={self.p_cut} add up to more than 1; they share the pasted marks")
        if self.freeze_stages < 0:
            raise MarkguardError(f"freeze_stages={self.freeze_stages} must be 0 or more")
        if self.init and (self.pretrained or self.weights):
            raise MarkguardError("init= and pretrained=/weights= both set; name the backbone's start once, with init=")
        if not 0 <= self.ema < 1:
            raise MarkguardError(f"ema={self.ema} must be in [0, 1)")


def resolve_recipe(recipe: str | None):
    """A path when one is clearly meant (a '/' in it, or ending in .yaml/.yml), else the shipped recipe of that name.

    So a folder that happens to be called like a recipe (``demo --out demo``) never shadows it.
    """
    if recipe is None or "/" in recipe or os.sep in recipe or recipe.endswith((".yaml", ".yml")):
        return recipe
    shipped = Path(__file__).parent / "recipes"
    path = shipped / f"{recipe}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in shipped.glob("*.yaml")))
        raise MarkguardError(f"no shipped recipe named {recipe!r} (shipped: {names}); for a file of your own give its path, e.g. ./{recipe}.yaml")
    return str(path)


def saved_config(run: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """The settings a run saved in ``RUN/config.yaml``, with ``key=value`` overrides a resume may change.

    An override of a setting the run's checkpoint depends on (anything but how long, how often it logs or
    checkpoints, and where it runs) is refused here, in one line, before anything loads.
    """
    import yaml

    from markguard.config import apply, parse_overrides, yaml_error
    from markguard.train.loop import RESUMABLE_CHANGES

    path = Path(run) / "config.yaml"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise MarkguardError(yaml_error(path, e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise MarkguardError(f"{path}: cannot read the run's saved settings ({e}); resume with the recipe and overrides it was started with") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise MarkguardError(f"{path}: not a run's saved settings (no 'config' mapping); resume with the recipe and overrides it was started with")
    cfg = apply(TrainConfig(), doc["config"], source=str(path))
    pairs = parse_overrides(overrides)
    resumed = apply(cfg, pairs, source="command line") if pairs else cfg
    changed = [k for k in pairs if getattr(resumed, k) != getattr(cfg, k) and k not in RESUMABLE_CHANGES]
    if changed:
        shown = ", ".join(f"{k}={getattr(cfg, k)!r} (asked {getattr(resumed, k)!r})" for k in sorted(changed))
        raise MarkguardError(f"{run} was trained with {shown}; a resume may change only {', '.join(RESUMABLE_CHANGES)} "
                             "(start a new --out to train with other settings)")
    return resumed


def fit_to_gallery(cfg: TrainConfig, explicit: set[str], log) -> TrainConfig:
    """Held-out brands and batch size scaled to a small gallery, unless given on the command line (``explicit``); each change logged.

    A recipe sized for thousands of brands (the logo recipe holds 50 out and fills batches of 64) would
    otherwise refuse a user's gallery of a few brands.
    """
    import dataclasses

    from markguard.datasets.registry import load_gallery
    from markguard.train.loop import fold_brand, read_brand_list

    if not cfg.gallery or cfg.trainset:
        return cfg
    gallery = load_gallery(cfg.gallery)
    brands = sorted(b for b, br in gallery.brands.items() if br.marks)
    changes = {}
    if cfg.exclude_brands:
        excluded = read_brand_list(cfg.exclude_brands)
        out = [b for b in brands if fold_brand(b) in excluded]
        if out and len(out) == len(brands):
            raise MarkguardError(f"{cfg.gallery}: all {len(brands)} brands are listed in exclude_brands={cfg.exclude_brands} (brands kept out "
                                 "of training for the real-photo evaluation); to train on them add exclude_brands=null")
        if out:
            log(f"train: exclude_brands={cfg.exclude_brands} leaves out {len(out)} of the gallery's {len(brands)} brands "
                f"({', '.join(out[:5])}{', ...' if len(out) > 5 else ''}); exclude_brands=null trains on them")
    if "holdout_brands" not in explicit and cfg.holdout_brands > len(brands) // 20:
        changes["holdout_brands"] = len(brands) // 20
        log(f"train: the gallery has {len(brands)} brands: holdout_brands {cfg.holdout_brands} -> {changes['holdout_brands']} "
            "(at most 1 brand in 20 is held out for the open-set check; holdout_brands=N chooses)")
    held = set(brands[len(brands) - changes.get("holdout_brands", cfg.holdout_brands):]) if changes.get("holdout_brands", cfg.holdout_brands) else set()
    excluded = read_brand_list(cfg.exclude_brands) if cfg.exclude_brands else set()
    classes = sum(1 for m in gallery.marks if m.brand not in held and fold_brand(m.brand) not in excluded)  # one class a mark
    fill = classes * cfg.m_per_class
    if "batch_size" not in explicit and cfg.sampler == "m_per_class" and 2 <= classes and fill < cfg.batch_size:
        changes["batch_size"] = fill
        log(f"train: {classes} marks x m_per_class={cfg.m_per_class} fill a batch of {fill}: batch_size {cfg.batch_size} -> {fill} "
            "(batch_size=N chooses)")
    return dataclasses.replace(cfg, **changes) if changes else cfg
