"""The sellers' edits the product bench and the copy-detection trainer make: each deterministic by seed, each visible."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from markguard.datasets.edits import EDITS, FRAMES, apply_edit, compositions, random_edit
from markguard.errors import MarkguardError


def photo(seed=0, size=(160, 120)) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :]
    a[..., 1] = np.linspace(255, 0, size[1], dtype=np.uint8)[:, None]
    a[30:80, 40:120, 2] = 200  # an off-centre block: mirroring and cropping change the picture
    return Image.fromarray(np.clip(a.astype(int) + rng.integers(0, 20, a.shape), 0, 255).astype(np.uint8))


OTHERS = [photo(5, (90, 90)), photo(6, (100, 70))]


@pytest.mark.parametrize("kind", list(EDITS) + ["crop+text", "colour+mirror", "crop+collage", "text+screenshot", "resize+background"])
def test_each_edit_is_deterministic_changes_the_photo_and_places_it(kind):
    img = photo()
    a, b = apply_edit(img, kind, 7, OTHERS), apply_edit(img, kind, 7, OTHERS)
    assert a.image.mode == "RGB" and a.kind == kind
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))  # the same seed, the same pixels
    changed = a.image.size != img.size or not np.array_equal(np.asarray(a.image), np.asarray(img))
    assert changed
    x0, y0, x1, y1 = a.box
    assert 0 <= x0 < x1 <= a.image.width and 0 <= y0 < y1 <= a.image.height
    seeds = {np.asarray(apply_edit(img, kind, s, OTHERS).image).tobytes() for s in range(6)}
    assert len(seeds) > 1  # another seed, another edit


def test_frames_put_the_photo_inside_a_larger_picture():
    img = photo()
    for kind in FRAMES:
        e = apply_edit(img, kind, 3, OTHERS)
        x0, y0, x1, y1 = e.box
        assert (x1 - x0) * (y1 - y0) < 0.8 * e.image.width * e.image.height, kind
        inner = np.asarray(e.image.crop(e.box).resize(img.size), np.float32)
        # the box holds the photo (letterboxed in a collage tile at worst): it correlates with the source
        if kind != "collage":
            assert np.corrcoef(inner[..., 0].ravel(), np.asarray(img, np.float32)[..., 0].ravel())[0, 1] > 0.8, kind


def test_mirror_flips_and_crop_keeps_part():
    img = photo()
    m = apply_edit(img, "mirror", 0)
    a = np.asarray(m.image, np.int16)
    flipped = np.asarray(img, np.int16)[:, ::-1]
    upside = np.asarray(img, np.int16)[::-1]
    assert min(np.abs(a - flipped).mean(), np.abs(a - upside).mean()) < 12
    c = apply_edit(img, "crop", 0)
    assert c.image.width * c.image.height < 0.85 * img.width * img.height


def test_unknown_and_three_edits_refused():
    with pytest.raises(MarkguardError, match="unknown edit 'blur'"):
        apply_edit(photo(), "blur", 0)
    with pytest.raises(MarkguardError, match="two joined by"):
        apply_edit(photo(), "crop+text+jpeg", 0)


def test_compositions_pair_different_edits_at_most_one_frame():
    combos = compositions()
    assert "crop+text" in combos and "crop+crop" not in combos
    assert not any(a in FRAMES and b in FRAMES for a, b in (c.split("+") for c in combos))


def test_random_edit_draws_singles_and_pairs_reproducibly():
    kinds = [random_edit(photo(), np.random.default_rng(s), OTHERS).kind for s in range(30)]
    assert any("+" in k for k in kinds) and any("+" not in k for k in kinds)
    again = [random_edit(photo(), np.random.default_rng(s), OTHERS).kind for s in range(30)]
    assert kinds == again


def test_every_composition_says_where_the_photo_is():
    img = photo(size=(120, 90))
    for kind in compositions():
        e = apply_edit(img, kind, 1, OTHERS)
        x0, y0, x1, y1 = e.box
        assert 0 <= x0 < x1 <= e.image.width and 0 <= y0 < y1 <= e.image.height, (kind, e.box, e.image.size)
