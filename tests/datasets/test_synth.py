import json

import numpy as np
import pytest
from PIL import Image

from markguard.datasets.registry import load_gallery
from markguard.datasets.synth import (
    Backgrounds,
    SynthConfig,
    bend,
    make_listing,
    make_marks,
    near_match,
    paste_mark,
    procedural_background,
    swap_letters,
    synth_dataset,
)


def test_marks_are_deterministic_and_distinct():
    a = make_marks(4, 2, seed=1)
    b = make_marks(4, 2, seed=1)
    assert [m.mark for m in a] == [m.mark for m in b]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))
    assert {m.kind for m in a} == {"logo", "wordmark"}
    assert len({np.asarray(m.image).tobytes() for m in a}) == len(a)
    assert all(m.image.mode == "RGBA" and m.image.getchannel("A").getextrema()[0] == 0 for m in a)


def test_paste_returns_the_box_of_the_pasted_pixels():
    rng = np.random.default_rng(0)
    bg = Image.new("RGB", (200, 150), (0, 0, 0))
    mark = Image.new("RGBA", (40, 40), (255, 255, 255, 255))
    box = paste_mark(bg, mark, rng, scale=0.4, strength=0.0)
    x0, y0, x1, y1 = box
    arr = np.asarray(bg)
    assert arr[(y0 + y1) // 2, (x0 + x1) // 2].min() >= 150  # the mark, or its label, is there
    assert x1 - x0 == 60 and y1 - y0 == 60  # 0.4 of the short side, no distortion at strength 0
    outside = arr.copy()
    outside[max(0, y0 - 10) : y1 + 10, max(0, x0 - 10) : x1 + 10] = 0
    assert outside.max() == 0  # nothing was drawn elsewhere


def test_listing_truth_boxes_lie_inside_the_photo():
    rng = np.random.default_rng(5)
    marks = make_marks(3, 1, seed=0)
    cfg = SynthConfig(p_no_mark=0.0, p_distractor=0.0, max_marks=2)
    for _ in range(5):
        lst = make_listing(rng, marks, [], Backgrounds(), cfg)
        assert lst.marks
        for m in lst.marks:
            x0, y0, x1, y1 = m.box
            assert 0 <= x0 < x1 <= lst.image.width and 0 <= y0 < y1 <= lst.image.height


def test_near_match_variants_change_the_mark():
    rng = np.random.default_rng(0)
    mark = make_marks(1, 1, seed=2)[0].image
    for v in ("recolour", "mirror", "stretch", "crop", "occluded"):
        assert not np.array_equal(np.asarray(near_match(mark, v, rng)), np.asarray(mark)) or v == "mirror"


def test_synth_dataset_writes_gallery_dump_and_truth(tmp_path):
    paths = synth_dataset(tmp_path, brands=3, listings=6, seed=1)
    gallery = load_gallery(paths["gallery"])
    assert len(gallery.brands) == 3 and len(gallery.marks) == 6
    assert gallery.brands["brand000"].authorized_sellers == ["S0000"]
    truth = [json.loads(line) for line in paths["truth"].read_text().splitlines()]
    assert len(truth) == 6
    assert all((paths["listings"] / t["image"]).exists() for t in truth)
    again = synth_dataset(tmp_path / "again", brands=3, listings=6, seed=1)
    assert again["truth"].read_text() == paths["truth"].read_text()


def test_backgrounds_are_photo_like():
    img = procedural_background(64, 48, np.random.default_rng(0))
    assert img.size == (64, 48) and np.asarray(img).std() > 5


def test_letter_swaps_redraw_the_wordmark_in_its_own_style():
    rng = np.random.default_rng(0)
    wm = next(m for m in make_marks(3, 2, seed=4) if m.kind == "wordmark")
    for text in ("Mirate", "Lux", "oo", "a", "Ka zu"):
        for _ in range(20):
            swapped = swap_letters(text, rng)
            assert swapped != text and abs(len(swapped) - len(text)) <= 1
    fake = near_match(wm.image, "letters", rng, wm.wordmark)
    assert not np.array_equal(np.asarray(fake), np.asarray(wm.image))
    ink = lambda im: {tuple(p) for p in np.asarray(im)[np.asarray(im)[..., 3] == 255][:, :3]}  # noqa: E731
    assert ink(fake) <= ink(wm.image)  # same colours: only the letters changed
    assert abs(fake.height - wm.image.height) <= 0.2 * wm.image.height


def test_letters_near_matches_appear_in_listings_truth():
    marks = make_marks(4, 2, seed=0)
    cfg = SynthConfig(p_no_mark=0.0, p_distractor=0.0, p_near_match=1.0, max_marks=2)
    rng = np.random.default_rng(1)
    variants = [m.variant for _ in range(60) for m in make_listing(rng, marks, [], Backgrounds(), cfg).marks]
    assert "letters" in variants and "exact" not in variants


def test_bend_arches_the_mark_and_keeps_it_whole():
    bar = Image.new("RGBA", (80, 10), (255, 0, 0, 255))
    for amount in (0.5, -0.5):
        bent = bend(bar, amount)
        a = np.asarray(bent)[..., 3]
        assert bent.size == (80, 15)
        top = [int(np.argmax(a[:, x] > 128)) for x in (2, 40, 77)]
        if amount > 0:
            assert top[1] > top[0] and top[1] > top[2]  # the middle sags
        else:
            assert top[1] < top[0] and top[1] < top[2]
        assert (a > 128).sum() == pytest.approx(800, rel=0.1)  # no ink lost or invented
    assert np.array_equal(np.asarray(bend(bar, 0.0)), np.asarray(bar))


def test_synth_output_is_the_same_with_worker_processes(tmp_path):
    one = synth_dataset(tmp_path / "one", brands=3, listings=10, seed=2)
    two = synth_dataset(tmp_path / "two", brands=3, listings=10, seed=2, workers=2)
    assert one["truth"].read_text() == two["truth"].read_text()
    assert one["manifest"].read_text() == two["manifest"].read_text()
    for row in one["truth"].read_text().splitlines():
        name = json.loads(row)["image"]
        assert (one["listings"] / name).read_bytes() == (two["listings"] / name).read_bytes()
