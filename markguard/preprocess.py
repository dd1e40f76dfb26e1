"""Preprocessing resolved from a model card, once, with every default filled in (as timm's resolve_data_config).

Every path that feeds pixels to a model — index building, the local scan, the Ray actors, the ONNX
and TorchScript backends, verification, training and evaluation — asks :func:`resolve_preprocessing`
instead of reading card fields and defaults of its own. The region defaults live here and only here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from markguard.errors import MarkguardError

# where a scan looks when the card says nothing: the whole photo, then overlapping squares at these
# fractions of the short side (and 2:1 wide ones for wordmarks)
REGION_DEFAULTS = {"mode": "grid", "scales": [1.0, 0.6, 0.4, 0.25], "overlap": 0.5}
# second looks (infer/looks.py): off unless the card or --looks asks; the rest are their settings when on
LOOK_DEFAULTS = {"per_photo": 0, "per_batch": 64, "margin": 1.5, "min_score": 0.05, "resolution": 1280, "refine": 1}
RESIZES = ("letterbox",)  # long side to the size, padded bottom/right with the mean colour


@dataclass(frozen=True)
class RegionSettings:
    mode: str  # a RegionMode name (infer/regions checks it: markguard/ does not import the scan)
    scales: tuple[float, ...]
    overlap: float


@dataclass(frozen=True)
class LookSettings:
    per_photo: int  # proposals of one photo that may get a second look (0: no second look)
    per_batch: int  # second looks of one batch at most: the cost of a batch is bounded
    margin: float  # a look's window is this many times its proposal's long side
    min_score: float  # proposals the head scores lower get no look
    resolution: int  # long side of the photo copy looks are cut from (the photo's own when smaller)
    refine: int = 1  # 1: the head's best box on the look itself replaces the proposal's (tighter boxes)

    def replace(self, **changes) -> "LookSettings":
        """These settings with the given ones over them; a None leaves a setting as it is (an option not given)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its pixels."""

    input_size: int  # training crops and rendered reference marks
    scan_size: int  # long side of a listing photo at scan time (letterboxed square)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str
    regions: RegionSettings
    looks: LookSettings

    @property
    def norm(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.mean, self.std


def resolve_preprocessing(card, *, source: str = "model card") -> Preprocessing:
    """The preprocessing ``card`` (a ModelCard) asks for; ``source`` names it in the one-line error."""
    if card.resize not in RESIZES:
        raise MarkguardError(f"{source}: field resize is {card.resize!r}; choose one of {', '.join(RESIZES)}")
    regions = {**REGION_DEFAULTS, **(card.regions or {})}
    looks = {**LOOK_DEFAULTS, **(regions.get("looks") or {})}
    return Preprocessing(int(card.input_size), int(card.scan_size), tuple(float(v) for v in card.mean),
                         tuple(float(v) for v in card.std), card.resize,
                         RegionSettings(str(regions["mode"]), tuple(float(s) for s in regions["scales"]),
                                        float(regions["overlap"])),
                         LookSettings(int(looks["per_photo"]), int(looks["per_batch"]), float(looks["margin"]),
                                      float(looks["min_score"]), int(looks["resolution"]), int(looks["refine"])))
