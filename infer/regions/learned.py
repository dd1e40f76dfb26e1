"""Learned regions: the model's proposal head on the feature map, plus the whole photo (and a coarse grid)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import nms

from markguard.errors import MarkguardError
from markguard.infer.regions.grid import grid_boxes

NO_HEAD = "model has no proposal head; use --regions grid or train with proposals"
MIN_SIDE = 2.0  # proposals thinner than this (letterbox pixels) after clipping pool nothing useful


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



def learned_regions(model, settings, fmap, valid: list[tuple[int, int]], input_size: int) -> list[torch.Tensor]:
    """The whole photo, then the head's proposals, best first."""
    props = learned_proposals(model, fmap, valid, input_size)
    return [torch.cat([torch.tensor([[0.0, 0.0, float(w), float(h)]]), p.boxes.float()]) for (w, h), p in zip(valid, props)]


def learned_grid_regions(model, settings, fmap, valid: list[tuple[int, int]], input_size: int) -> list[torch.Tensor]:
    """Learned proposals and a coarse grid (default: half the short side), which catches marks the head scores
    below its threshold."""
    scales = model.proposals.get("grid_scales") or [0.5]
    return [torch.cat([b, grid_boxes(w, h, scales, settings.overlap)[1:]])
            for b, (w, h) in zip(learned_regions(model, settings, fmap, valid, input_size), valid)]
