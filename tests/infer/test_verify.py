"""Geometric verification on synthetic photos where the truth is known: exact copies verify and get tight boxes, other marks do not."""

from __future__ import annotations


import numpy as np
import pytest
import torch

pytest.importorskip("cv2")

from markguard.checkpoint import ModelCard
from markguard.datasets.synth import make_marks, paste_mark, procedural_background, write_gallery
from markguard.datasets.transforms import letterbox
from markguard.errors import MarkguardError
from markguard.infer.results import Match
from markguard.infer.index import MarkIndex
from markguard.infer.scan import Searcher
from markguard.infer.verify import VerifyConfig, reference_variants, verify_matches, verify_region

SCAN = 320
CARD = ModelCard(scan_size=SCAN, fingerprint="f" * 16)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A gallery of four marks, an index over it, and photos with one known mark pasted in each."""
    root = tmp_path_factory.mktemp("verify")
    marks = make_marks(2, 2, seed=11)
    gallery = write_gallery(marks, root / "gallery")
    records = [{"brand": m.brand, "mark": m.mark, "source": str(gallery / m.brand / f"{m.mark}.png")} for m in marks]
    vecs = np.eye(len(marks), 8, dtype=np.float32)
    index = MarkIndex.build(vecs, records, fingerprint=CARD.fingerprint, kind="flat")
    searcher = Searcher("", root, index, None, CARD, {})
    rng = np.random.default_rng(5)
    photos = []
    for i, m in enumerate(marks):
        img = procedural_background(480, 360, rng)
        box = paste_mark(img, m.image, rng, scale=0.45, strength=0.4)
        photos.append((img, box, m))
    return marks, records, searcher, photos


# photos[0] shows a flat, symmetric cross: its corners match each other as well as themselves, so
# RANSAC cannot fix a homography; the other three (two wordmarks, a multi-shape logo) have texture.
VERIFIABLE = slice(1, None)
SYMMETRIC = 0


def _batch(photos):
    lbs = [letterbox(img, SCAN, CARD.mean, CARD.std) for img, _, _ in photos]
    x = torch.stack([lb.tensor for lb in lbs])
    return x, [(1 / lb.factor, 1 / lb.factor) for lb in lbs]


def _loose(box, img, grow=0.3, shift=0.1):
    """A region the way a scan finds one: larger than the mark and off-centre."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    return [max(0, int(x0 - grow * w + shift * w)), max(0, int(y0 - grow * h)),
            min(img.width, int(x1 + grow * w + shift * w)), min(img.height, int(y1 + grow * h))]


def test_exact_copy_verifies_and_tightens_box(scene):
    marks, _, searcher, photos = scene
    photos = photos[VERIFIABLE]
    x, to_orig = _batch(photos)
    found = [[Match(m.brand, m.mark, 0.5, _loose(box, img))] for img, box, m in photos]
    before = [_iou(f[0].box, p[1]) for f, p in zip(found, photos)]
    out = verify_matches(x, found, searcher, to_orig, 1.0)
    for (img, box, m), matches, b in zip(photos, out, before):
        assert len(matches) == 1 and matches[0].mark == m.mark
        assert matches[0].score > 0.6, f"{m.mark}: exact copy not verified (score {matches[0].score})"
        assert _iou(matches[0].box, box) >= 0.7, f"{m.mark}: box {matches[0].box} vs truth {box}"
        assert _iou(matches[0].box, box) > b  # tighter than the region it started from


def test_exact_copy_many_inliers_unrelated_mark_few(scene):
    marks, records, _, photos = scene
    img, box, m = photos[1]
    image = np.asarray(img)
    own = reference_variants(records[1]["source"])  # as a scan checks it: as registered, mirrored, inverted
    v = verify_region(image, _loose(box, img), own)
    assert v.verified and v.inliers >= 1.5 * VerifyConfig().min_inliers, v
    for rec in records[:1] + records[2:]:
        other = verify_region(image, _loose(box, img), reference_variants(rec["source"]))
        # another word set in the same font shares letter shapes, so a few chance inliers can pass min_inliers;
        # what must hold is that no plausible homography comes of them and the own mark's count is far above
        assert not other.verified and other.inliers < v.inliers / 2, (rec["mark"], other)


def test_symmetric_mark_gets_no_wrong_box(scene):
    """Where the geometry is ambiguous the match must stay as the embedding found it, never get a wrong box."""
    marks, _, searcher, photos = scene
    img, box, m = photos[SYMMETRIC]
    x, to_orig = _batch([photos[SYMMETRIC]])
    loose = _loose(box, img)
    got = verify_matches(x, [[Match(m.brand, m.mark, 0.5, loose)]], searcher, to_orig, 1.0)[0][0]
    assert (got.score, got.box, got.evidence.get("geometry") is None or not got.evidence["geometry"].verified) == (0.5, loose, True) \
        or _iou(got.box, box) >= 0.7


def test_unverified_match_keeps_score_and_box(scene):
    marks, _, searcher, photos = scene
    x, to_orig = _batch(photos[:1])
    img, box, m = photos[0]
    wrong = next(o for o in marks if o.mark != m.mark)
    loose = _loose(box, img)
    out = verify_matches(x, [[Match(wrong.brand, wrong.mark, 0.42, loose)], []], searcher, to_orig + [(1.0, 1.0)], 1.0)
    (got,) = out[0]
    assert (got.brand, got.mark, got.score, got.box) == (wrong.brand, wrong.mark, 0.42, loose)
    # checked and failed is evidence too: its inliers, no outline (the typed record, as results.jsonl will hold it)
    ev = got.evidence_json()
    assert ev["verified"] is False and ev["inliers"] < VerifyConfig().min_inliers and "outline" not in ev
    assert out[1] == []


def test_a_verified_match_carries_its_inliers_coverage_and_outline(scene):
    marks, _, searcher, photos = scene
    x, to_orig = _batch(photos[1:2])
    img, box, m = photos[1]
    start = Match(m.brand, m.mark, 0.5, _loose(box, img), evidence={"similarity": 0.5})
    (got,) = verify_matches(x, [[start]], searcher, to_orig, 1.0)[0]
    ev = got.evidence_json()
    assert ev["similarity"] == 0.5  # the embedding's own similarity stays, beside the re-scored score
    assert ev["verified"] is True and ev["inliers"] >= VerifyConfig().min_inliers and 0 < ev["coverage"] <= 1
    outline = np.asarray(ev["outline"])
    assert outline.shape == (4, 2)
    # the outline is the projected reference: its bounding box is (up to clipping and rounding) the tightened box
    x0, y0 = outline.min(0)
    x1, y1 = outline.max(0)
    assert _iou([x0, y0, x1, y1], got.box) >= 0.9 and _iou(got.box, box) >= 0.7
    assert start.evidence == {"similarity": 0.5}  # the input match is left as it was


def test_scan_size_factor_maps_boxes(scene):
    """Boxes come back in original pixels when the scan rescaled the batch (factor != 1)."""
    marks, _, searcher, photos = scene
    x, to_orig = _batch(photos[1:2])
    factor = 0.75
    x = torch.nn.functional.interpolate(x, size=int(SCAN * factor), mode="bilinear", antialias=True)
    img, box, m = photos[1]
    out = verify_matches(x, [[Match(m.brand, m.mark, 0.5, _loose(box, img))]], searcher, to_orig, factor)
    assert out[0][0].score > 0.6 and _iou(out[0][0].box, box) >= 0.7


def test_bad_method_names_the_choices():
    with pytest.raises(MarkguardError, match="sift, orb"):
        VerifyConfig(method="surf")


def test_plan_checks_only_candidates_near_the_review_threshold():
    from markguard.infer.verify import plan

    cfg = VerifyConfig(candidates=2, near=0.05)
    values = [[0.95, 0.90, 0.89], [0.86, 0.70], [0.50], [0.88, 0.87]]
    floors = [[0.9] * 3, [0.9] * 2, [0.9], [0.9] * 2]
    # photo 0: its best two (the third is past `candidates`); photo 1: 0.86 is within `near`, 0.70 is not; photo 2: far below
    assert plan(values, floors, cfg) == [{0, 1}, {0}, set(), {0, 1}]
    # one photo at a time: a photo's plan is the same whatever shares its batch (a resumed or sharded scan gives the same rows)
    assert plan(values[1:2], floors[1:2], cfg) == [{0}]
    assert plan(values, floors, VerifyConfig(candidates=3, near=float("inf"))) == [{0, 1, 2}, {0, 1}, {0}, {0, 1}]
    assert plan([[0.95]], [[0.9]], cfg, [[False]]) == [set()]  # a match without a box has nothing to check


def test_near_is_checked():
    with pytest.raises(MarkguardError, match="below the review threshold"):
        VerifyConfig(near=-0.1)


def test_checks_pick_the_matches_and_keypoints_come_from_the_full_resolution_copy(scene):
    """With ``hires`` the crop is cut from the photo as decoded (here half its size), not from the letterboxed batch;
    only the matches ``checks`` names are verified."""
    marks, _, searcher, photos = scene
    img, box, m = photos[1]
    x, to_orig = _batch(photos[1:2])
    half = img.resize((img.width // 2, img.height // 2))
    hires = [torch.from_numpy(np.asarray(half.convert("RGB")).transpose(2, 0, 1).copy())]
    loose = _loose(box, img)
    matches = [Match(m.brand, m.mark, 0.5, loose), Match(m.brand, m.mark, 0.4, list(loose))]
    out = verify_matches(x, [matches], searcher, to_orig, 1.0, checks=[{1}], hires=hires, hires_to_orig=[(2.0, 2.0)],
                         orig_size=[img.size])[0]
    checked = next(g for g in out if g.evidence)
    unchecked = next(g for g in out if not g.evidence)
    assert checked.evidence["geometry"].verified is True and checked.score > 0.4 and _iou(checked.box, box) >= 0.7  # photo pixels
    assert (unchecked.score, unchecked.box) == (0.5, loose)
    same = verify_matches(x, [matches], searcher, to_orig, 1.0, checks=[set()])
    assert [[c.to_json() for c in cs] for cs in same] == [[m.to_json() for m in matches]]


def test_a_mirrored_copy_verifies_against_the_mirror_image_and_says_so(scene):
    """Keypoint descriptors do not match a mark's mirror image; the reference's mirror is checked too."""
    from PIL import Image

    from markguard.datasets.synth import paste_mark, procedural_background

    marks, _, searcher, photos = scene
    m = photos[1][2]  # a wordmark: nothing like its own mirror image
    rng = np.random.default_rng(9)
    img = procedural_background(480, 360, rng)
    box = paste_mark(img, m.image.transpose(Image.FLIP_LEFT_RIGHT), rng, scale=0.45, strength=0.4)
    x, to_orig = _batch([(img, box, m)])
    (got,) = verify_matches(x, [[Match(m.brand, m.mark, 0.5, _loose(box, img))]], searcher, to_orig, 1.0)[0]
    assert got.evidence["geometry"].verified is True and got.evidence["geometry"].mirrored is True and _iou(got.box, box) >= 0.7
    # the same mark unflipped verifies as itself: no "mirrored"
    img0, box0, _ = photos[1]
    x0, to_orig0 = _batch(photos[1:2])
    (plain,) = verify_matches(x0, [[Match(m.brand, m.mark, 0.5, _loose(box0, img0))]], searcher, to_orig0, 1.0)[0]
    assert plain.evidence["geometry"].verified is True and "mirrored" not in plain.evidence_json()


def test_a_mark_printed_light_on_dark_verifies_against_the_inverted_reference(scene):
    from PIL import Image, ImageOps

    marks, records, searcher, photos = scene
    m = photos[2][2]
    rgb, alpha = m.image.convert("RGB"), m.image.getchannel("A")
    light = ImageOps.invert(rgb)
    light.putalpha(alpha)
    img = Image.new("RGB", (480, 360), (25, 25, 35))  # a dark shirt
    light = light.resize((200, round(200 * light.height / light.width)))
    img.paste(light, (120, 90), light)
    box = (120, 90, 320, 90 + light.height)
    src = next(r["source"] for r in records if r["mark"] == m.mark)
    variants = reference_variants(src)
    assert verify_region(np.asarray(img), _loose(box, img), variants).verified
    assert not verify_region(np.asarray(img), _loose(box, img), variants[:2]).verified  # as registered or mirrored only: not


def test_reference_keypoints_are_cached_on_disk_by_content(scene, tmp_path, monkeypatch):
    """Detected once per reference file's content and settings, read back exactly (without pickles) by a later scan;
    an unreadable cached file is detected again and replaced."""
    from markguard.infer import verify

    monkeypatch.setenv("MARKGUARD_CACHE", str(tmp_path / "cache"))
    _, records, _, _ = scene
    src = records[0]["source"]
    verify.reference_features.cache_clear()
    first = reference_variants(src)
    files = sorted((tmp_path / "cache" / "verify").rglob("*.npz"))
    assert len(files) == 4  # as registered, mirrored, inverted, both
    verify.reference_features.cache_clear()
    detected = []
    monkeypatch.setattr(verify, "_reference_features", lambda *a: detected.append(a))
    again = reference_variants(src)
    assert not detected  # all four came from the disk
    for a, b in zip(first, again):
        assert np.array_equal(a.points, b.points) and np.array_equal(a.corners, b.corners) and a.mirrored == b.mirrored
        assert a.descriptors.dtype == b.descriptors.dtype and np.array_equal(a.descriptors, b.descriptors)
    monkeypatch.undo()
    monkeypatch.setenv("MARKGUARD_CACHE", str(tmp_path / "cache"))
    files[0].write_bytes(b"not an npz")
    verify.reference_features.cache_clear()
    assert all(v is not None for v in reference_variants(src))
    assert files[0].read_bytes() != b"not an npz"
    verify.reference_features.cache_clear()


def test_a_photos_candidates_in_one_region_share_its_keypoints(scene, monkeypatch):
    """Checking a second mark (or a mark's second reference file) in a region already checked detects nothing again,
    and decides exactly as a fresh check does."""
    from markguard.infer import verify

    marks, records, searcher, photos = scene
    img, box, m = photos[0]
    image = np.asarray(img)
    calls = []
    real = verify._features
    monkeypatch.setattr(verify, "_features", lambda gray, method: calls.append(gray.shape) or real(gray, method))
    memo = {}
    srcs = [r["source"] for r in records[:3]]
    shared = [verify_region(image, _loose(box, img), reference_variants(s), memo=memo) for s in srcs]
    with_memo = len(calls)
    fresh = [verify_region(image, _loose(box, img), reference_variants(s)) for s in srcs]
    assert with_memo <= 2 and len(calls) - with_memo >= 3  # one detection a view, against one a view per check
    assert [(v.inliers, v.box) for v in shared] == [(v.inliers, v.box) for v in fresh]


def test_photos_checked_side_by_side_give_the_rows_one_thread_gives(scene):
    """Photos are checked on several threads (one OpenCV core each); the outcome is the same, photo for photo, and
    OpenCV's own thread count is restored after."""
    import cv2

    marks, _, searcher, photos = scene
    photos = photos * 2  # eight photos: both threads get several
    x, to_orig = _batch(photos)
    found = [[Match(m.brand, m.mark, 0.5, _loose(box, img)), Match(other.brand, other.mark, 0.45, _loose(box, img))]
             for (img, box, m), other in zip(photos, marks[1:] + marks[:1] + marks[1:] + marks[:1])]
    found[3] = []  # a photo without candidates keeps none
    before = cv2.getNumThreads()
    one = verify_matches(x, found, searcher, to_orig, 1.0, threads=1)
    two = verify_matches(x, found, searcher, to_orig, 1.0, threads=2)
    assert cv2.getNumThreads() == before
    assert one == two and two[3] == []
    assert sum(c.evidence.get("geometry") is not None for cs in two for c in cs) >= 8  # checked, not passed through


def test_warm_references_caches_every_view_so_a_scan_detects_none(scene, tmp_path, monkeypatch):
    from markguard.infer import verify

    monkeypatch.setenv("MARKGUARD_CACHE", str(tmp_path / "cache"))
    _, records, _, _ = scene
    verify.reference_features.cache_clear()
    sources = [r["source"] for r in records] + [str(tmp_path / "gone.png")]
    done = verify.warm_references(sources, threads=2)
    assert done["references"] == len(records) + 1 and done["unreadable"] == 1
    assert len(list((tmp_path / "cache" / "verify").rglob("*.npz"))) == 4 * len(records)
    verify.reference_features.cache_clear()
    monkeypatch.setattr(verify, "_reference_features", lambda *a: pytest.fail(f"detected again: {a}"))
    assert all(v is not None for r in records for v in reference_variants(r["source"]))
    verify.reference_features.cache_clear()
