"""Recolourings keep the mark's shape (its alpha) and change its paint."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from markguard.datasets.colour import Recolour, recolour


def _mark() -> Image.Image:
    img = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.ellipse([4, 4, 40, 40], fill=(200, 30, 30, 255))
    d.rectangle([36, 10, 60, 30], fill=(30, 30, 200, 255))
    return img


@pytest.mark.parametrize("kind", list(Recolour))
def test_shape_kept_colour_changed(kind):
    mark = _mark()
    rng = np.random.default_rng(1)
    out = kind(mark, rng)
    a0 = np.asarray(mark.getchannel("A")) > 0
    a1 = np.asarray(out.getchannel("A")) > 0
    if kind is Recolour.on_badge:  # the badge adds a filled shape around the mark
        assert a1.sum() > a0.sum() and out.width >= mark.width
        return
    assert (a0 == a1).all()
    rgb0 = np.asarray(mark.convert("RGB"), dtype=int)[a0]
    rgb1 = np.asarray(out.convert("RGB"), dtype=int)[a1]
    assert np.abs(rgb0 - rgb1).mean() > 5


def test_inverted_is_exact():
    mark = _mark()
    out = Recolour.inverted(mark, np.random.default_rng(0))
    a = np.asarray(mark.getchannel("A")) > 0
    assert (np.asarray(out.convert("RGB"), dtype=int)[a] == 255 - np.asarray(mark.convert("RGB"), dtype=int)[a]).all()


def test_two_tone_has_two_colours():
    solid = Image.new("RGBA", (60, 60), (10, 10, 10, 255))
    out = np.asarray(Recolour.two_tone(solid, np.random.default_rng(3)).convert("RGB")).reshape(-1, 3)
    assert len({tuple(c) for c in out}) == 2


def test_random_choice_is_deterministic():
    a = recolour(_mark(), np.random.default_rng(7))
    b = recolour(_mark(), np.random.default_rng(7))
    assert np.array_equal(np.asarray(a), np.asarray(b))
