"""Regions: where in a photo a mark may be, as boxes in the model input's pixels and in the photo's own.

Each region method is a function in its own module and one member of :class:`RegionMode`, whose
value carries the function and what it needs (as :class:`~markguard.infer.index.IndexKind` carries
its settings). Every method's first box is the whole photo, so a photo that is all mark still matches.
A new method: a module with ``fn(model, settings, fmap, valid, input_size) -> [boxes per photo]``
and a member here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

import numpy as np
import torch

from markguard.errors import MarkguardError
from markguard.infer.regions.grid import grid_boxes, grid_regions
from markguard.infer.regions.learned import (NO_HEAD, Proposals, decode_proposals, learned_grid_regions, learned_proposals,
                                             learned_regions)
from markguard.infer.regions.whole import whole_photo
from markguard.preprocess import resolve_preprocessing

__all__ = ["NO_HEAD", "Proposals", "RegionMethod", "RegionMode", "Regions", "decode_proposals", "find_regions", "grid_boxes",
           "learned_proposals", "region_boxes", "select_regions"]


@dataclass(frozen=True)
class RegionMethod:
    name: str  # as --regions and a model card's regions.mode spell it
    select: Callable[..., list[torch.Tensor]]
    needs_fmap: bool = False  # chooses its boxes from the backbone's feature map (a learned head)
    # "pool": every region pooled from one backbone pass; "crops": each region cropped and embedded on its own
    embed: str = "pool"


class RegionMode(Enum):
    """How a scan chooses the regions it embeds."""

    none = RegionMethod("none", whole_photo)
    grid = RegionMethod("grid", grid_regions)  # a fixed multi-scale grid pooled from one backbone pass
    tiles = RegionMethod("tiles", grid_regions, embed="crops")  # the same grid, cropped: the slow baseline
    learned = RegionMethod("learned", learned_regions, needs_fmap=True)
    # learned proposals, the whole photo and a coarse grid, for recall when the head is unsure
    learned_grid = RegionMethod("learned+grid", learned_grid_regions, needs_fmap=True)

    @property
    def label(self) -> str:
        return self.value.name

    @classmethod
    def _missing_(cls, value):
        return next((m for m in cls if m.value.name == value), None)

    @classmethod
    def named(cls, value, where: str = "--regions") -> RegionMode:
        """The mode spelled ``value``; ``where`` names the setting it came from, for the one-line error."""
        try:
            return cls(value)
        except ValueError:
            raise MarkguardError(f"{where}: unknown region mode {value!r}; choose one of "
                                 f"{', '.join(m.label for m in cls)}") from None


def select_regions(mode, model, card, fmap, valid: list[tuple[int, int]], input_size: int) -> list[torch.Tensor]:
    """:func:`region_boxes` with the region settings of ``card`` (a ModelCard), for callers outside a scan."""
    return region_boxes(mode, model, resolve_preprocessing(card).regions, fmap, valid, input_size)


def region_boxes(mode, model, settings, fmap, valid: list[tuple[int, int]], input_size: int) -> list[torch.Tensor]:
    """Boxes (in the model input's pixels) per photo of a batch; ``settings``: the model's resolved RegionSettings;
    ``valid`` is each photo's content size. Chosen after the backbone pass, so that a learned head on ``fmap`` can propose them."""
    method = RegionMode.named(mode).value
    if method.needs_fmap and fmap is None:
        raise MarkguardError(f"--regions {method.name} needs the backbone's feature map; it cannot be combined with tiles")
    return method.select(model, settings, fmap, valid, input_size)


@dataclass
class Regions:
    """One batch's regions for one model."""

    boxes: list[torch.Tensor]  # per photo, (R, 4) in the model input's pixels
    photo_boxes: list[np.ndarray]  # the same boxes in the original photo's pixels, clipped to the photo

    @property
    def counts(self) -> list[int]:
        return [len(b) for b in self.boxes]


def find_regions(mode: RegionMode, model, settings, inp, fmap) -> Regions:
    """The regions stage: boxes for a ModelInput (infer/decode.py), mapped back to photo pixels (``settings``: RegionSettings)."""
    boxes = region_boxes(mode, model, settings, fmap, inp.valid, inp.x.shape[-1])
    return Regions(boxes, inp.to_photo(boxes))
