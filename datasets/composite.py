"""Training samples made on the fly: a mark as its clean reference, pasted into a listing-like photo, or background.

Every sample carries one box: the model pools that region from its feature map, exactly as a
scan does, so a pasted mark learns to land next to its clean reference. The clean reference is
rendered by ``render_reference``, the function index building embeds references with
(``infer/embed.embed_references``), and pooled from its tight box as there.

Pasted marks cover every size a scan meets (issue 20): from ``scale[0]`` to ``scale[1]`` of the
crop's short side, the mark alone edge to edge (``p_fill``), a close-up cut by the crop's border
(``p_cut``), and other marks beside it in the same photo (``p_multi``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from markguard.datasets.colour import recolour
from markguard.datasets.synth import Backgrounds, find_fonts, jpeg_roundtrip, near_match, paste_mark, render_logo, render_wordmark, random_word
from markguard.datasets.transforms import render_reference, to_tensor


@dataclass
class CompositeConfig:
    size: int = 128
    p_clean: float = 0.3
    p_background: float = 0.1
    scale: tuple[float, float] = (0.3, 0.9)  # mark's long side over the photo's short side
    strength: float = 1.0  # of rotation/perspective/blur in pasting
    loose_boxes: float = 0.5  # share of pasted marks pooled from a loose window around them, as a scan's grid sees them
    p_recolour: float = 0.0  # share of pasted marks recoloured (datasets/colour.py): the design, not the paint, is the mark
    p_negative: float = 0.0  # share of background samples showing something mark-like that is no registered mark
    p_photo: float = 1.0  # share of backgrounds from the photo folders, when given (the rest procedural)
    p_fill: float = 0.0  # share of pasted marks shown alone, edge to edge (a print on a T-shirt, a badge's close-up)
    p_cut: float = 0.0  # share of pasted marks larger than the crop or at its edge, cut by its border
    p_multi: float = 0.0  # share of pasted marks with one or two other marks beside them in the photo
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class CompositeDataset(Dataset):
    """``length`` virtual samples; sample i has label ``labels[i]`` (mark class, or ``num_marks`` for background).

    Deterministic: sample i of epoch e is the same on every run and every worker.
    """

    def __init__(self, marks: list[Image.Image], length: int, cfg: CompositeConfig, *, seed: int = 0,
                 backgrounds: str | None = None, background_class: bool = True):
        self.marks = marks
        self.cfg = cfg
        self.seed = seed
        self.epoch = 0
        self.backgrounds = Backgrounds(backgrounds, pool=256, pool_size=2 * cfg.size, p_photo=cfg.p_photo)
        self._fonts = None
        n = len(marks) + (1 if background_class else 0)
        rng = np.random.default_rng(seed)
        labels = np.arange(length) % len(marks)
        if background_class:
            labels[rng.random(length) < cfg.p_background] = len(marks)
        self.labels = labels.tolist()
        self.num_classes = n

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        rng = np.random.default_rng((self.seed, self.epoch, i))
        label = self.labels[i]
        S = self.cfg.size
        if label == len(self.marks):  # background: a region of a photo with no mark
            img = self.backgrounds.sample(S, S, rng)
            w, h = rng.uniform(0.25, 0.9, size=2) * S
            x, y = rng.uniform(0, S - w), rng.uniform(0, S - h)
            box = (x, y, x + w, y + h)
            if rng.random() < self.cfg.p_negative:
                box = self._paste_negative(img, box, rng)
        elif rng.random() < self.cfg.p_clean:
            img, box = render_reference(self.marks[label], S)
        else:
            mark = self.marks[label]
            if rng.random() < self.cfg.p_recolour:
                mark = recolour(mark, rng)
            if rng.random() < 0.05:  # mild near-match: counterfeits are rarely pixel-exact
                mark = near_match(mark, "occluded", rng)
            img, box, kind = self._paste(mark, label, rng)
            if box is None:
                img, box = render_reference(self.marks[label], S)
            elif kind != "fill" and rng.random() < self.cfg.loose_boxes:
                box = loosen(box, S, rng)
            if rng.random() < 0.5:
                img = jpeg_roundtrip(img, int(rng.integers(40, 95)))
        return to_tensor(img, self.cfg.mean, self.cfg.std), torch.tensor(box, dtype=torch.float32), label

    def _paste(self, mark: Image.Image, label: int, rng: np.random.Generator):
        """The mark pasted into a photo one of three ways: (image, box or None, kind)."""
        S, cfg = self.cfg.size, self.cfg
        u = rng.random()
        if u < cfg.p_fill:  # the mark alone, edge to edge: on white, on a flat label colour or on a photo
            v = rng.random()
            if v < 0.35:
                img = Image.new("RGB", (S, S), (255, 255, 255))
            elif v < 0.65:
                img = Image.new("RGB", (S, S), tuple(int(c) for c in rng.integers(0, 256, size=3)))
            else:
                img = self.backgrounds.sample(S, S, rng)
            box = paste_mark(img, mark, rng, scale=float(rng.uniform(0.9, 1.0)), strength=0.3 * cfg.strength)
            return img, box, "fill"
        img = self.backgrounds.sample(S, S, rng)
        if u < cfg.p_fill + cfg.p_cut:  # a close-up: the crop's border cuts the mark
            box = paste_mark(img, mark, rng, scale=float(rng.uniform(0.6, 1.5)), strength=0.5 * cfg.strength, cut=0.35)
            if box is not None and min(box[2] - box[0], box[3] - box[1]) < max(4, S // 16):
                box = None
            return img, box, "cut"
        box = paste_mark(img, mark, rng, scale=float(rng.uniform(*cfg.scale)), strength=cfg.strength)
        if box is not None and rng.random() < cfg.p_multi and len(self.marks) > 1:  # other marks beside it
            occupied = [box]
            for _ in range(int(rng.integers(1, 3))):
                other = int(rng.integers(0, len(self.marks) - 1))
                other += other >= label  # any mark but this one
                placed = paste_mark(img, self.marks[other], rng, scale=float(rng.uniform(0.1, 0.45)),
                                    occupied=occupied, strength=cfg.strength)
                if placed is not None:
                    occupied.append(placed)
            return img, box, "multi"
        return img, box, "paste"

    def _paste_negative(self, img: Image.Image, box, rng: np.random.Generator):
        """A hard negative in the background region: a generic shape or plain text, which no brand owns."""
        if self._fonts is None:
            self._fonts = find_fonts()
        if rng.random() < 0.5 or not self._fonts:
            thing = render_logo(rng, size=96)  # circles, stars, ticks, arrows, in one or two colours
        else:
            thing = render_wordmark(random_word(rng), rng, self._fonts, size=48)
        x0, y0, x1, y1 = box
        region = img.crop(tuple(int(v) for v in box))
        placed = paste_mark(region, thing, rng, scale=float(rng.uniform(0.5, 0.95)), strength=self.cfg.strength)
        if placed is None:
            return box
        img.paste(region, (int(x0), int(y0)))
        return (int(x0) + placed[0], int(y0) + placed[1], int(x0) + placed[2], int(y0) + placed[3])


def loosen(box, size: int, rng: np.random.Generator, max_grow: float = 1.8) -> tuple[float, float, float, float]:
    """A window up to ``max_grow`` times the box's sides, shifted but still holding its centre, clipped to the image."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    g = rng.uniform(1.0, max_grow)
    nw, nh = w * g, h * g
    cx = (x0 + x1) / 2 + rng.uniform(-0.5, 0.5) * (nw - w)
    cy = (y0 + y1) / 2 + rng.uniform(-0.5, 0.5) * (nh - h)
    return (max(0.0, cx - nw / 2), max(0.0, cy - nh / 2), min(float(size), cx + nw / 2), min(float(size), cy + nh / 2))
