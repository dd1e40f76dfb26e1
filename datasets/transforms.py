"""Preprocessing built from a model card: letterboxing, normalisation and the reference-mark rendering.

Training, index building and scanning all call these, so a mark is seen the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from markguard.datasets.decode import composite

REFERENCE_MARGIN = 0.08  # blank border around a reference mark, as a fraction of the canvas


@dataclass
class Letterboxed:
    tensor: torch.Tensor  # (3, size, size), normalised
    factor: float  # letterbox pixels per input-image pixel
    valid: tuple[int, int]  # (width, height) of the image inside the square; the rest is padding


def to_tensor(img: Image.Image, mean, std) -> torch.Tensor:
    """CHW float tensor normalised by ``mean``/``std`` (numpy here: torch's threads thrash on tiny ops in loaders)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) * (1 / 255)
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def letterbox_geometry(width: int, height: int, size: int) -> tuple[float, int, int]:
    """The scale factor and the content size of a ``width`` x ``height`` image letterboxed into ``size``."""
    f = size / max(width, height)
    return f, max(1, round(width * f)), max(1, round(height * f))


def letterbox(img: Image.Image, size: int, mean, std) -> Letterboxed:
    """Resize the long side to ``size`` and pad bottom/right with zeros (the mean colour after normalising)."""
    f, w, h = letterbox_geometry(img.width, img.height, size)
    resized = img.convert("RGB").resize((w, h), Image.BILINEAR, reducing_gap=2.0 if f < 0.5 else None)
    out = torch.zeros(3, size, size)
    out[:, :h, :w] = to_tensor(resized, mean, std)
    return Letterboxed(out, f, (w, h))


def render_reference(mark: Image.Image, size: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A reference mark flattened on white and centred in a ``size`` square; returns it and the mark's box."""
    flat = composite(mark)
    inner = int(size * (1 - 2 * REFERENCE_MARGIN))
    f = inner / max(flat.size)
    w, h = max(1, round(flat.width * f)), max(1, round(flat.height * f))
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    x, y = (size - w) // 2, (size - h) // 2
    canvas.paste(flat.resize((w, h), Image.BICUBIC), (x, y))
    return canvas, (x, y, x + w, y + h)
