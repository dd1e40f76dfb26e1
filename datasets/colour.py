"""Marks in colour: recolourings that turn one-colour glyphs into the many ways a mark is printed.

Real marks are multi-colour and get printed in whatever the product allows: brand colour, black,
white on a coloured badge, a gradient, two tones, inverted. Training on Simple Icons' one-colour
glyphs alone teaches what Simple Icons look like; these recolourings (applied per sample) teach
that the design, not its paint, makes two marks the same.
"""

from __future__ import annotations

from enum import Enum

import numpy as np
from PIL import Image, ImageDraw


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random print colour, biased away from near-white (which vanishes on labels)."""
    if rng.random() < 0.2:
        return np.full(3, float(rng.integers(0, 60)), dtype=np.float32)  # black-ish
    c = rng.integers(0, 256, size=3).astype(np.float32)
    if c.min() > 200:
        c[int(rng.integers(3))] = float(rng.integers(0, 120))
    return c


def _rgba(mark: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(mark.convert("RGBA"), dtype=np.float32)
    return arr[..., :3], arr[..., 3:]


def _image(rgb: np.ndarray, alpha: np.ndarray) -> Image.Image:
    out = np.concatenate([np.clip(rgb, 0, 255), alpha], axis=-1).astype(np.uint8)
    return Image.fromarray(out, "RGBA")


def solid(mark: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The whole mark in one colour (a one-colour print, an embossing)."""
    rgb, a = _rgba(mark)
    return _image(np.broadcast_to(_colour(rng), rgb.shape).copy(), a)


def palette(mark: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Each shade of the mark mapped onto a random two- or three-colour ramp (keeps the design's parts apart)."""
    rgb, a = _rgba(mark)
    lum = (rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)) / 255.0
    stops = np.stack([_colour(rng) for _ in range(int(rng.integers(2, 4)))])
    t = lum * (len(stops) - 1)
    i = np.clip(t.astype(int), 0, len(stops) - 2)
    f = (t - i)[..., None]
    return _image(stops[i] * (1 - f) + stops[i + 1] * f, a)


def gradient(mark: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A linear gradient between two colours across the mark, at a random angle."""
    rgb, a = _rgba(mark)
    h, w = a.shape[:2]
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * np.cos(theta) + yy * np.sin(theta)
    t = ((t - t.min()) / max(1e-6, float(t.max() - t.min())))[..., None]
    c0, c1 = _colour(rng), _colour(rng)
    return _image(c0 * (1 - t) + c1 * t, a)


def two_tone(mark: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The mark split by a random straight line into two colours."""
    rgb, a = _rgba(mark)
    h, w = a.shape[:2]
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    side = ((xx - w * rng.uniform(0.3, 0.7)) * np.cos(theta) + (yy - h * rng.uniform(0.3, 0.7)) * np.sin(theta)) > 0
    out = np.where(side[..., None], _colour(rng), _colour(rng))
    return _image(out, a)


def inverted(mark: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Colours inverted (a negative print); the shape is kept."""
    rgb, a = _rgba(mark)
    return _image(255.0 - rgb, a)


def hue_shift(mark: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Every colour rotated round the hue circle by the same random angle (a multi-colour mark re-coloured)."""
    hsv = np.asarray(mark.convert("RGB").convert("HSV"), dtype=np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(rng.integers(30, 226))) % 256
    rgb = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"), dtype=np.float32)
    return _image(rgb, _rgba(mark)[1])


def on_badge(mark: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The mark in white (or one light colour) on a coloured badge: rectangle, rounded square or circle."""
    rgb, a = _rgba(mark)
    h, w = a.shape[:2]
    pad = int(max(w, h) * rng.uniform(0.08, 0.3))
    W, H = w + 2 * pad, h + 2 * pad
    shape = rng.choice(["rect", "round", "circle"])
    if shape == "circle":
        W = H = max(W, H)
    badge = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    fill = tuple(int(c) for c in _colour(rng)) + (255,)
    d = ImageDraw.Draw(badge)
    if shape == "circle":
        d.ellipse([0, 0, W - 1, H - 1], fill=fill)
    elif shape == "round":
        d.rounded_rectangle([0, 0, W - 1, H - 1], radius=int(min(W, H) * 0.2), fill=fill)
    else:
        d.rectangle([0, 0, W - 1, H - 1], fill=fill)
    ink = np.full(3, 255.0 if rng.random() < 0.7 else float(rng.integers(180, 256)), dtype=np.float32)
    fg = _image(np.broadcast_to(ink, rgb.shape).copy(), a)
    badge.alpha_composite(fg, ((W - w) // 2, (H - h) // 2))
    return badge


class Recolour(Enum):
    """Recolourings by name; each value is the function."""

    solid = (solid,)
    palette = (palette,)
    gradient = (gradient,)
    two_tone = (two_tone,)
    inverted = (inverted,)
    hue_shift = (hue_shift,)
    on_badge = (on_badge,)

    def __call__(self, mark: Image.Image, rng: np.random.Generator) -> Image.Image:
        return self.value[0](mark, rng)


def recolour(mark: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One recolouring chosen at random."""
    kinds = list(Recolour)
    return kinds[int(rng.integers(len(kinds)))](mark, rng)
