"""Regions: where in a photo a mark may be, as boxes in the letterboxed input's pixels."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
from torchvision.ops import nms

from markguard.errors import MarkguardError

NO_HEAD = "model has no proposal head; use --regions grid or train with proposals"
MIN_SIDE = 2.0  # proposals thinner than this (letterbox pixels) after clipping pool nothing useful


class RegionMode(str, Enum):
    """How a scan chooses the regions it pools from the feature map."""

    none = "none"  # the whole photo only
    grid = "grid"  # a fixed multi-scale grid pooled from one backbone pass (R-MAC style)
    tiles = "tiles"  # the same grid cropped and embedded one by one: the slow baseline
    learned = "learned"  # the model's proposal head, plus the whole photo
    learned_grid = "learned+grid"  # learned proposals, the whole photo and a coarse grid, for recall when the head is unsure

    @classmethod
    def named(cls, value, where: str = "--regions") -> RegionMode:
        """The mode spelled ``value``; ``where`` names the setting it came from, for the one-line error."""
        try:
            return cls(value)
        except ValueError:
            raise MarkguardError(f"{where}: unknown region mode {value!r}; choose one of "
                                 f"{', '.join(m.value for m in cls)}") from None


def _positions(extent: float, side: float, stride: float) -> list[float]:
    if side >= extent:
        return [0.0]
    n = int((extent - side) // stride) + 1
    pos = [i * stride for i in range(n)]
    if pos[-1] + side < extent - 1:  # cover the far edge too
        pos.append(extent - side)
    return pos


def grid_boxes(width: int, height: int, scales=(1.0, 0.6, 0.4, 0.25), overlap: float = 0.5, wide: bool = True) -> torch.Tensor:
    """Boxes (R, 4) over a ``width`` x ``height`` image: the whole image first, then square windows at each
    scale of the short side (and 2:1 wide ones for wordmarks), overlapping by ``overlap``."""
    boxes = [(0.0, 0.0, float(width), float(height))]
    short = min(width, height)
    for s in scales:
        if s >= 1.0:
            continue
        shapes = [(s * short, s * short)]
        if wide and 2 * s * short <= width:
            shapes.append((2 * s * short, s * short))
        for w, h in shapes:
            for y in _positions(height, h, h * (1 - overlap)):
                for x in _positions(width, w, w * (1 - overlap)):
                    boxes.append((x, y, min(x + w, width), min(y + h, height)))
    return torch.tensor(boxes, dtype=torch.float32)


@dataclass
class Proposals:
    """One image's learned proposals, best first, in letterbox pixels."""

    boxes: torch.Tensor  # (R, 4) x0, y0, x1, y1
    scores: torch.Tensor  # (R,) mark-ness in [0, 1]


def decode_proposals(logits: torch.Tensor, dist: torch.Tensor, stride: float, valid: list[tuple[int, int]], *,
                     top_k: int = 20, score_thresh: float = 0.05, nms_iou: float = 0.5, pre_nms: int = 1000) -> list[Proposals]:
    """The head's per-cell outputs → boxes per image: cells over the padding are dropped, boxes clipped to
    the image's content (``valid`` = width, height), thresholded, suppressed (NMS) and cut to ``top_k``."""
    from markguard.model import cell_centres, distances_to_boxes

    B, H, W = logits.shape
    boxes = distances_to_boxes(dist, stride).reshape(B, H * W, 4)
    scores = logits.float().sigmoid().reshape(B, H * W)
    cx, cy = cell_centres(H, W, stride, logits.device)
    cx, cy = cx.reshape(-1), cy.reshape(-1)
    out = []
    for i, (w, h) in enumerate(valid):
        # a cell whose centre lies on the letterbox padding sees mostly padding: its guess is noise
        keep = (cx < w) & (cy < h) & (scores[i] >= score_thresh)
        b, s = boxes[i][keep], scores[i][keep]
        b = torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], dim=1)
        ok = ((b[:, 2] - b[:, 0]) >= MIN_SIDE) & ((b[:, 3] - b[:, 1]) >= MIN_SIDE)
        b, s = b[ok], s[ok]
        if len(s) > pre_nms:
            s, order = s.topk(pre_nms)
            b = b[order]
        kept = nms(b, s, nms_iou)[:top_k]  # nms returns indices by decreasing score
        out.append(Proposals(b[kept].cpu(), s[kept].cpu()))
    return out


def learned_proposals(model, fmap: torch.Tensor, valid: list[tuple[int, int]], input_size: int) -> list[Proposals]:
    """Run ``model``'s proposal head on ``fmap`` and decode it with the model card's settings."""
    if getattr(model, "proposal_head", None) is None:
        raise MarkguardError(NO_HEAD)
    with torch.no_grad():
        logits, dist = model.propose(fmap)
    return decode_proposals(logits, dist, model.stride_of(fmap, input_size), valid,
                            top_k=int(model.proposal_setting("top_k")), score_thresh=float(model.proposal_setting("score_thresh")),
                            nms_iou=float(model.proposal_setting("nms_iou")))


def select_regions(mode: RegionMode, model, card, fmap, valid: list[tuple[int, int]], input_size: int) -> list[torch.Tensor]:
    """Boxes (in letterbox pixels) per image of a batch, chosen after the backbone pass so that a
    learned head on ``fmap`` can propose them; ``valid`` is each image's content size.

    Every mode's first box is the whole image, so a photo that is all mark (a pack shot) still matches.
    """
    mode = RegionMode.named(mode)
    whole = [torch.tensor([[0.0, 0.0, float(w), float(h)]]) for w, h in valid]
    if mode is RegionMode.none:
        return whole
    r = card.regions
    if mode in (RegionMode.grid, RegionMode.tiles):
        return [grid_boxes(w, h, r.get("scales", (1.0, 0.6, 0.4, 0.25)), r.get("overlap", 0.5)) for w, h in valid]
    if fmap is None:
        raise MarkguardError(f"--regions {mode.value} needs the backbone's feature map; it cannot be combined with tiles")
    props = learned_proposals(model, fmap, valid, input_size)
    out = [torch.cat([wb, p.boxes.to(wb.dtype)]) for wb, p in zip(whole, props)]
    if mode is RegionMode.learned_grid:
        # a coarse grid (default: half the short side) catches marks the head scores below its threshold
        scales = model.proposals.get("grid_scales") or [0.5]
        out = [torch.cat([b, grid_boxes(w, h, scales, r.get("overlap", 0.5))[1:]]) for b, (w, h) in zip(out, valid)]
    return out
