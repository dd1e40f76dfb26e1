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
MAX_PYRAMID_LEVELS = 4  # the first look's scales (infer/pyramid.py): each costs a backbone pass
MIN_PYRAMID_SIZE = 32  # two cells of a stride-16 feature map


@dataclass(frozen=True)
class RegionSettings:
    mode: str  # a RegionMode name (infer/regions checks it: markguard/ does not import the scan)
    scales: tuple[float, ...]
    overlap: float


@dataclass(frozen=True)
class PyramidLevel:
    """One scale of the first look (infer/pyramid.py): the photo letterboxed to ``size`` px, its similarities times ``gain``
    (measured so that every level's scores on mark-free photos sit where the others' do)."""

    size: int
    gain: float = 1.0


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
    # the first look's scales, largest first; (scan_size,) when the card names none: one pass, as before pyramids
    pyramid: tuple[PyramidLevel, ...] = ()

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
                                      float(looks["min_score"]), int(looks["resolution"]), int(looks["refine"])),
                         resolve_pyramid(regions.get("pyramid"), int(card.scan_size), source))


def resolve_pyramid(value, scan_size: int, source: str = "model card") -> tuple[PyramidLevel, ...]:
    """A card's ``regions.pyramid`` — sizes in px, largest first, each a number or ``{"size": N, "gain": G}`` — checked;
    absent, the one scan-size pass. Every refusal is one line naming the field."""
    where = f"{source}: field regions.pyramid"
    if value is None:
        return (PyramidLevel(scan_size),)
    if not isinstance(value, list) or not value:
        raise MarkguardError(f"{where} is {value!r}; give a list of 1 to {MAX_PYRAMID_LEVELS} sizes in px, e.g. [{scan_size}, 128]")
    if len(value) > MAX_PYRAMID_LEVELS:
        raise MarkguardError(f"{where} has {len(value)} scales; at most {MAX_PYRAMID_LEVELS} (each is a backbone pass)")
    levels = []
    for v in value:
        size, gain = (v.get("size"), v.get("gain", 1.0)) if isinstance(v, dict) else (v, 1.0)
        if isinstance(size, bool) or not isinstance(size, (int, float)) or size != int(size):
            raise MarkguardError(f"{where}: size {size!r} is not a whole number of pixels")
        if not MIN_PYRAMID_SIZE <= size <= scan_size:
            raise MarkguardError(f"{where}: size {size!r} is outside {MIN_PYRAMID_SIZE}..{scan_size} (the scan size the photos are "
                                 "decoded at); a scale cannot be larger than the decoded photo")
        if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not 0.5 <= gain <= 1.5:
            raise MarkguardError(f"{where}: gain {gain!r} of size {size} is not a number in 0.5..1.5")
        levels.append(PyramidLevel(int(size), float(gain)))
    sizes = [lv.size for lv in levels]
    if sizes != sorted(set(sizes), reverse=True):
        raise MarkguardError(f"{where}: sizes {sizes} must be distinct and largest first")
    return tuple(levels)
