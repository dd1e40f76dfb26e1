"""Preprocessing resolved from a model card, once, with every default filled in (as timm's resolve_data_config).

Every path that feeds pixels to a model — index building, the local scan, the Ray actors, the ONNX
and TorchScript backends, verification, training and evaluation — asks :func:`resolve_preprocessing`
instead of reading card fields and defaults of its own. The region defaults live here and only here.
"""

from __future__ import annotations

from dataclasses import dataclass

from markguard.errors import MarkguardError

# where a scan looks when the card says nothing: the whole photo, then overlapping squares at these
# fractions of the short side (and 2:1 wide ones for wordmarks)
REGION_DEFAULTS = {"mode": "grid", "scales": [1.0, 0.6, 0.4, 0.25], "overlap": 0.5}
RESIZES = ("letterbox",)  # long side to the size, padded bottom/right with the mean colour


@dataclass(frozen=True)
class RegionSettings:
    mode: str  # a RegionMode name (infer/regions checks it: markguard/ does not import the scan)
    scales: tuple[float, ...]
    overlap: float


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its pixels."""

    input_size: int  # training crops and rendered reference marks
    scan_size: int  # long side of a listing photo at scan time (letterboxed square)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str
    regions: RegionSettings

    @property
    def norm(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.mean, self.std


def resolve_preprocessing(card, *, source: str = "model card") -> Preprocessing:
    """The preprocessing ``card`` (a ModelCard) asks for; ``source`` names it in the one-line error."""
    if card.resize not in RESIZES:
        raise MarkguardError(f"{source}: field resize is {card.resize!r}; choose one of {', '.join(RESIZES)}")
    regions = {**REGION_DEFAULTS, **(card.regions or {})}
    return Preprocessing(int(card.input_size), int(card.scan_size), tuple(float(v) for v in card.mean),
                         tuple(float(v) for v in card.std), card.resize,
                         RegionSettings(str(regions["mode"]), tuple(float(s) for s in regions["scales"]),
                                        float(regions["overlap"])))
