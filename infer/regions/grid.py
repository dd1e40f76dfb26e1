"""Grid regions: the whole photo and overlapping windows at several scales (R-MAC style), pooled or cropped."""

from __future__ import annotations

import torch


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


def grid_regions(model, settings, fmap, valid: list[tuple[int, int]], input_size: int) -> list[torch.Tensor]:
    """The card's multi-scale grid over each photo's content (``settings``: a RegionSettings)."""
    return [grid_boxes(w, h, settings.scales, settings.overlap) for w, h in valid]
