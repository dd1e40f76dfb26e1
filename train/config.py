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

# a product model's regions (whole catalogue photos and large regions: a collage tile, a screenshot's frame)
PRODUCT_REGIONS = {"mode": "grid", "scales": [1.0, 0.7, 0.5], "overlap": 0.5, "product": True}


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
    product: bool = False  # the model matches whole photos (product recipe): indexes hold whole photos, scans pool large regions
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
