import json

import numpy as np
from PIL import Image

from markguard.datasets.registry import load_gallery
from markguard.datasets.synth import SynthConfig, make_listing, make_marks, near_match, paste_mark, procedural_background, synth_dataset, Backgrounds


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
