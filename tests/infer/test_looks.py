"""The second look: who gets one (bounded per photo and per batch), the windows, the crops, and a scan
where only the second look finds a small mark."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from markguard.errors import MarkguardError
from markguard.infer.embed import RegionEmbeddings
from markguard.infer.looks import Looks, choose_looks, crop_windows, look_windows, with_looks
from markguard.preprocess import LOOK_DEFAULTS, LookSettings

SETTINGS = LookSettings(**{**LOOK_DEFAULTS, "per_photo": 2, "per_batch": 3, "min_score": 0.2})


def test_choose_looks_bounds_per_photo_and_per_batch_by_score():
    scores = [torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0.95, 0.1]), torch.tensor([0.85, 0.6])]
    chosen = choose_looks(scores, SETTINGS)
    # per photo at most 2 (the third proposal of photo 0 is out), none under 0.2, then the batch's best 3:
    # 0.95 (1,0), 0.9 (0,0), 0.85 (2,0) — 0.8 and 0.6 lose to the cap
    assert [c.tolist() for c in chosen] == [[0], [0], [0]]
    more = choose_looks(scores, SETTINGS.replace(per_batch=10))
    assert [c.tolist() for c in more] == [[0, 1], [0], [0, 1]]
    assert [c.tolist() for c in choose_looks([torch.zeros(0)], SETTINGS)] == [[]]


def test_replace_keeps_what_is_not_given():
    assert SETTINGS.replace(per_photo=None, per_batch=7) == LookSettings(**{**LOOK_DEFAULTS, "per_photo": 2, "per_batch": 7,
                                                                            "min_score": 0.2})


def test_windows_are_squares_around_the_box_with_a_margin_and_a_floor():
    win = look_windows(np.array([[10, 20, 30, 60], [100, 100, 102, 101]], np.float32), margin=1.5, min_side=16)
    side = win[:, 2] - win[:, 0]
    assert np.allclose(side, win[:, 3] - win[:, 1]) and np.allclose(side, [60, 16])  # 1.5 x the long side 40; the floor
    assert np.allclose((win[:, :2] + win[:, 2:]) / 2, [[20, 40], [101, 100.5]])  # centred on the box
    assert look_windows(np.zeros((0, 4), np.float32), 1.5, 16).shape == (0, 4)


def test_crops_come_from_the_full_resolution_copy_and_pad_outside_with_the_mean():
    img = torch.zeros(3, 100, 200, dtype=torch.uint8)
    img[:, 40:60, 150:170] = 255  # a white square
    crops = crop_windows(img, np.array([[140, 30, 180, 70], [-20, -20, 20, 20]], np.float32), 40, (0.5,) * 3, (0.5,) * 3)
    assert crops.shape == (2, 3, 40, 40)
    centre, corner = crops[0, :, 10:30, 10:30], crops[0, :, :5, :5]
    assert torch.allclose(centre, torch.ones_like(centre)) and torch.allclose(corner, -torch.ones_like(corner))
    # the second window is three quarters outside the photo: padding (0 = the mean colour), the photo's black corner inside
    assert torch.all(crops[1, :, :18, :] == 0) and torch.allclose(crops[1, :, 22:, 22:], -torch.ones(3, 18, 18))


def test_looks_join_each_photos_first_look_regions():
    first = RegionEmbeddings(torch.arange(3.0)[:, None], [2, 1])
    looks = Looks(torch.tensor([[10.0], [11.0]]), [1, 1], [np.full((1, 4), 7.0), np.full((1, 4), 8.0)], [torch.ones(1)] * 2)
    emb, boxes = with_looks(first, [np.zeros((2, 4)), np.ones((1, 4))], looks)
    assert emb.counts == [3, 2] and emb.vectors[:, 0].tolist() == [0.0, 1.0, 10.0, 2.0, 11.0]
    assert boxes[0][:, 0].tolist() == [0, 0, 7] and boxes[1][:, 0].tolist() == [1, 8]


def test_card_looks_are_checked(tmp_path):
    from markguard.card import check_card_fields

    with pytest.raises(MarkguardError, match="looks: unknown key 'perphoto'"):
        check_card_fields({"regions": {"looks": {"perphoto": 2}}}, "card.json")
    with pytest.raises(MarkguardError, match="looks: margin must be a finite number between 1.0 and 8.0"):
        check_card_fields({"regions": {"looks": {"margin": 0.5}}}, "card.json")


@pytest.fixture(scope="module")
def small_marks(tmp_path_factory):
    """Generated marks, each pasted at 8% of the short side of a 1600 x 1200 photo, and an index of them
    built with the shipped model: at its scan size of 320 px such a mark covers about two feature cells."""
    from markguard.datasets.synth import make_marks, paste_mark, procedural_background
    from markguard.infer.build import build_index

    root = tmp_path_factory.mktemp("small_marks")
    marks = make_marks(8, 1, seed=6)
    for m in marks:
        (root / "gallery" / m.brand).mkdir(parents=True)
        m.image.save(root / "gallery" / m.brand / f"{m.mark}.png")
    rng = np.random.default_rng(2)
    (root / "photos").mkdir()
    truth = {}
    for i, m in enumerate(marks):
        bg = procedural_background(1600, 1200, rng)
        box = paste_mark(bg, m.image, rng, scale=0.08, strength=0.2)
        if i in (1,):  # a photo whose mark the first look alone names wrongly and a second look rightly (checked below;
            # with the shipped model 4097dba0c2e45f38, 2 of these 8 photos are named rightly at once, 3 with four looks; over
            # four such fixtures of 8, 10 of 32 at once and 11 with four looks, against 12 and 14 for 9e417e721a175d94:
            # benchmarks/results/model.md)
            bg.save(root / "photos" / f"{m.brand}.jpg", quality=92)
            truth[m.brand] = box
    build_index(root / "gallery", root / "index", model=None, kind="flat", device="cpu")
    return root, truth


def _scan(root, looks: int):
    from markguard.infer.scan import ScanOptions, load_searchers, resolve_policy, scan_rows

    searchers = load_searchers([root / "index"], None, "cpu")
    policy = resolve_policy(searchers[0].card.thresholds, {}, flag=-1.0, review=-1.0)
    return {r.listing_id: r for r in scan_rows(root / "photos", searchers, policy, ScanOptions(looks=looks, workers=0))}


@pytest.mark.slow
def test_only_the_second_look_finds_small_marks(small_marks):
    from markguard.boxes import iou

    root, truth = small_marks
    first = _scan(root, looks=0)
    assert sum(first[b].matches[0].brand == b for b in truth) <= 1, {b: first[b].matches[0].brand for b in truth}
    second = _scan(root, looks=4)
    for brand, box in truth.items():
        best = second[brand].matches[0]
        assert best.brand == brand, (brand, [(m.brand, round(m.score, 3)) for m in second[brand].matches])
        # the box: the proposal the look was cut for, refined by the head on the look itself, in the photo's own pixels
        assert iou(best.box, box) >= 0.3 and all(0 <= v <= s for v, s in zip(best.box, (1600, 1200, 1600, 1200))), (best.box, box)


@pytest.mark.slow
def test_the_second_look_tightens_the_boxes(small_marks):
    import dataclasses

    from markguard.boxes import iou
    from markguard.infer.scan import ScanOptions, load_searchers, resolve_policy, scan_rows

    root, truth = small_marks
    mean_iou = {}
    for refine in (0, 1):
        searchers = load_searchers([root / "index"], None, "cpu")
        searchers[0].prep = dataclasses.replace(searchers[0].prep, looks=searchers[0].prep.looks.replace(refine=refine))
        policy = resolve_policy(searchers[0].card.thresholds, {}, flag=-1.0, review=-1.0)
        rows = {r.listing_id: r for r in scan_rows(root / "photos", searchers, policy, ScanOptions(looks=4, workers=0))}
        mean_iou[refine] = np.mean([iou(rows[b].matches[0].box, box) for b, box in truth.items()])
    assert mean_iou[1] > mean_iou[0] + 0.1, mean_iou


def test_looks_need_a_proposal_head_and_sane_bounds(tiny_world):
    from markguard.infer.scan import ScanOptions, load_searchers, resolve_policy, scan_rows

    searchers = load_searchers([tiny_world["index"]], None, "cpu")
    policy = resolve_policy(searchers[0].card.thresholds, {})
    with pytest.raises(MarkguardError, match="--looks 2: the model in .* has no proposal head"):
        list(scan_rows(tiny_world["manifest"], searchers, policy, ScanOptions(looks=2, workers=0)))
    with pytest.raises(MarkguardError, match="--looks -1"):
        list(scan_rows(tiny_world["manifest"], searchers, policy, ScanOptions(looks=-1, workers=0)))


@pytest.mark.slow
def test_odd_photos_get_a_row_each_and_no_box_outside_them(small_marks, tmp_path):
    """Second looks on a photo smaller than the scan size, a 10:1 panorama, a 1-pixel-high strip, CMYK and 16-bit."""
    from PIL import Image

    from markguard.infer.scan import ScanOptions, load_searchers, resolve_policy, scan_rows

    root, _ = small_marks
    photo = Image.open(next((root / "photos").glob("*.jpg"))).convert("RGB")
    odd = tmp_path / "odd"
    odd.mkdir()
    photo.resize((120, 90)).save(odd / "tiny.png")
    photo.resize((2000, 200)).save(odd / "panorama.jpg")
    photo.resize((600, 1)).save(odd / "strip.png")
    photo.convert("CMYK").save(odd / "cmyk.jpg")
    Image.fromarray((np.asarray(photo.convert("L"), dtype=np.uint16) * 257)).save(odd / "deep.png")
    searchers = load_searchers([root / "index"], None, "cpu")
    policy = resolve_policy(searchers[0].card.thresholds, {}, flag=-1.0, review=-1.0)
    rows = {r.listing_id: r for r in scan_rows(odd, searchers, policy, ScanOptions(looks=4, workers=0))}
    assert sorted(rows) == ["cmyk", "deep", "panorama", "strip", "tiny"]
    assert rows["strip"].status == "error" and "too small" in rows["strip"].error
    sizes = {"tiny": (120, 90), "panorama": (2000, 200), "cmyk": photo.size, "deep": photo.size}
    for name, (w, h) in sizes.items():
        assert rows[name].status != "error", rows[name].error
        for m in rows[name].matches:
            x0, y0, x1, y1 = m.box
            assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h, (name, m.box)
