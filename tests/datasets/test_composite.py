"""Training composites that cover every size a scan meets (issue 20): 5-100% of the crop, edge to edge, cut by the border, several marks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from markguard.datasets.composite import CompositeConfig, CompositeDataset
from markguard.datasets.synth import paste_mark
from markguard.datasets.transforms import render_reference

S = 64
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def square(colour, size=40) -> Image.Image:
    return Image.new("RGBA", (size, size), (*colour, 255))


@pytest.fixture
def grey_photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (160, 120), (90, 90, 90)).save(folder / "grey.png")
    return folder


def dataset(marks, backgrounds=None, n=64, **kw) -> CompositeDataset:
    base = dict(size=S, p_clean=0.0, p_background=0.0, strength=0.0, loose_boxes=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    base.update(kw)
    return CompositeDataset(marks, n, CompositeConfig(**base), backgrounds=str(backgrounds) if backgrounds else None,
                            background_class=False)


def pixels(x) -> np.ndarray:
    return (x.numpy().transpose(1, 2, 0) * 255).round().clip(0, 255).astype(np.uint8)


def test_pasted_marks_span_five_to_a_hundred_percent_of_the_crop():
    ds = dataset([square(RED)], scale=(0.05, 1.0), n=120)
    sides = [max(b[2] - b[0], b[3] - b[1]) / S for _, b, _ in (ds[i] for i in range(len(ds)))]
    assert min(sides) < 0.15 and max(sides) > 0.85
    old = dataset([square(RED)], scale=(0.2, 0.9), n=120)  # the previous recipe's range never gets there
    assert min(max(b[2] - b[0], b[3] - b[1]) / S for _, b, _ in (old[i] for i in range(len(old)))) >= 0.15


def test_fill_shows_the_mark_alone_edge_to_edge():
    ds = dataset([square(RED)], p_fill=1.0, loose_boxes=1.0, n=24)
    red = 0
    for i in range(len(ds)):
        x, b, _ = ds[i]
        x0, y0, x1, y1 = b.tolist()
        assert max(x1 - x0, y1 - y0) >= 0.85 * S, (i, b)  # the mark's long side spans the crop, never loosened
        img = pixels(x)
        cy, cx = int((y0 + y1) / 2), int((x0 + x1) / 2)
        red += img[cy, cx, 0] > 200 and img[cy, cx, 1:].max() < 60
    assert red >= 18  # the mark itself (one in twenty is occluded as a mild near-match)


def test_cut_marks_are_clipped_by_the_border_and_the_box_is_the_visible_part():
    cut_any = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        bg = Image.new("RGB", (100, 80), (0, 0, 0))
        box = paste_mark(bg, square((255, 255, 255)), rng, scale=float(rng.uniform(0.5, 1.5)), strength=0.0, cut=0.35)
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= 100 and 0 <= y0 < y1 <= 80
        arr = np.asarray(bg)
        assert arr[y0:y1, x0:x1].min() == 255  # inside the box: the mark
        outside = arr.copy()
        outside[y0:y1, x0:x1] = 0
        assert outside.max() == 0  # nothing outside it
        cut_any += x0 == 0 or y0 == 0 or x1 == 100 or y1 == 80
    assert cut_any >= 20  # most placements run into the border


def test_cut_samples_touch_the_crops_border():
    ds = dataset([square(RED)], p_cut=1.0, n=32)
    edge = 0
    for i in range(len(ds)):
        _, b, _ = ds[i]
        x0, y0, x1, y1 = b.tolist()
        assert 0 <= x0 < x1 <= S and 0 <= y0 < y1 <= S and min(x1 - x0, y1 - y0) >= 4
        edge += x0 == 0 or y0 == 0 or x1 == S or y1 == S
    assert edge >= 24


def test_several_marks_in_one_photo(grey_photos):
    marks = [square(RED), square(GREEN), square(BLUE)]
    ds = dataset(marks, grey_photos, p_multi=1.0, p_photo=1.0, scale=(0.25, 0.4), n=30)
    others = 0
    for i in range(len(ds)):
        x, b, label = ds[i]
        img = pixels(x).astype(int)
        x0, y0, x1, y1 = (int(round(v)) for v in b.tolist())
        outside = np.ones(img.shape[:2], bool)
        outside[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2] = False
        colours = [c for c in range(3) if c != label]
        # another mark's pure colour outside the target's box (labels behind marks are pale, never pure)
        others += any(((img[..., c] > 200) & (np.delete(img, c, axis=2).max(axis=2) < 60) & outside).sum() > 20 for c in colours)
    assert others >= 15


def test_clean_samples_are_the_references_index_building_embeds():
    mark = square(RED, 30)
    ds = dataset([mark], p_clean=1.0, n=2)
    x, b, _ = ds[0]
    ref, box = render_reference(mark, S)  # what infer/embed.embed_references pools, from the same box
    assert tuple(b.tolist()) == tuple(float(v) for v in box)
    assert np.abs(pixels(x).astype(int) - np.asarray(ref).astype(int)).max() <= 1


def test_fill_and_cut_cannot_exceed_the_pasted_share():
    from markguard.errors import MarkguardError
    from markguard.train.config import TrainConfig

    with pytest.raises(MarkguardError, match="p_fill=0.7 and p_cut=0.5"):
        TrainConfig(gallery="g", p_fill=0.7, p_cut=0.5).validate()
