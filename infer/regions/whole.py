"""The whole photo as its only region: the cheapest look, for photos that are mostly mark (pack shots)."""

from __future__ import annotations

import torch


def whole_photo(model, settings, fmap, valid: list[tuple[int, int]], input_size: int) -> list[torch.Tensor]:
    return [torch.tensor([[0.0, 0.0, float(w), float(h)]]) for w, h in valid]
