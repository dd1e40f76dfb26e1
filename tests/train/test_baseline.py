"""The SIFT + RANSAC baseline: finds a pasted copy of a gallery mark with its box, and not a mark outside the gallery."""

from __future__ import annotations

import numpy as np
import pytest

from markguard.boxes import iou

pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from markguard.datasets.realbench import write_sample_sources

    return write_sample_sources(tmp_path_factory.mktemp("sift"), brands=6, photos=1, seed=4)


def _gallery(tmp_path, sources, brands):
    import shutil

    for b in brands:
        (tmp_path / "gallery" / b).mkdir(parents=True)
        shutil.copy(sources["marks"] / "icons" / b / f"{b}-original.svg", tmp_path / "gallery" / b / f"{b}-original.svg")
    return tmp_path / "gallery"


def _photo_with(sources, brand, seed):
    from PIL import Image

    from markguard.datasets.decode import load_mark
    from markguard.datasets.synth import paste_mark

    rng = np.random.default_rng(seed)
    bg = Image.open(next((sources["photos"] / "sample").glob("*.jpg"))).convert("RGB")
    box = paste_mark(bg, load_mark(sources["marks"] / "icons" / brand / f"{brand}-original.svg", size=512), rng, scale=0.4, strength=0.3)
    return np.asarray(bg), box


def test_finds_a_pasted_copy_and_not_an_unrelated_mark(tmp_path, sources):
    from markguard.train.baseline import SiftMatcher

    matcher = SiftMatcher(_gallery(tmp_path, sources, ["brand00", "brand01", "brand02"]))
    assert len(matcher.refs) == 3
    photo, box = _photo_with(sources, "brand01", seed=2)
    found = matcher.match(photo)
    assert found[0].brand == "brand01" and found[0].inliers >= 20, found[:2]
    assert iou(found[0].box, box) >= 0.5
    unrelated, _ = _photo_with(sources, "brand05", seed=2)  # not in the gallery
    best = max((m.inliers for m in matcher.match(unrelated)), default=0)
    assert best < 8


def test_sift_scan_writes_rows_the_scorer_reads(tmp_path, sources):
    from PIL import Image

    from markguard.train.baseline import sift_scan
    from markguard.train.realeval import read_bench_results

    gallery = _gallery(tmp_path, sources, ["brand00", "brand01"])
    (tmp_path / "dump").mkdir()
    Image.fromarray(_photo_with(sources, "brand01", seed=4)[0]).save(tmp_path / "dump" / "a.jpg", quality=92)
    (tmp_path / "dump" / "bad.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "dump" / "manifest.csv").write_text("listing_id,image_path\na,a.jpg\nbad,bad.jpg\n")
    summary = sift_scan(tmp_path / "dump" / "manifest.csv", gallery, tmp_path / "out")
    rows = read_bench_results(tmp_path / "out" / "results.jsonl")
    assert summary["images"] == 2 and rows["a"].brand == "brand01" and rows["a"].score >= 12
    assert rows["bad"].status == "error" and rows["bad"].error
