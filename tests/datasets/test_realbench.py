"""The real-photo benchmark builder: consistent truth, the tiers asked for, unregistered brands kept out of the gallery, the photo rules."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from markguard.datasets.realbench import (BANDS, LARGE_MIN, MAX_SIZE, SMALL_MAX, TIERS, BenchConfig, build_realbench, fetch_npm,
                                          fetch_photos, read_devicon, read_truth, select_photos, size_band, write_sample_sources)
from markguard.errors import MarkguardError


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("realbench")
    src = write_sample_sources(root / "sources", brands=12, photos=3)
    info = build_realbench(src["marks"], [src["photos"]], root / "bench", cross_dir=src["cross"], cfg=BenchConfig(brands=5, listings=40, seed=1))
    return root / "bench", info, src


def test_tiers_and_counts_are_as_asked(bench):
    out, info, _ = bench
    truth = read_truth(out / "truth.csv")
    expected = BenchConfig(brands=5, listings=40).per_tier()
    assert sum(expected.values()) == 40 and all(expected[t] > 0 for t in TIERS)
    counts = {t: sum(r.tier == t for r in truth.values()) for t in TIERS}
    assert counts == expected == info["listings_per_tier"]
    with open(out / "listings" / "manifest.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    assert [m["listing_id"] for m in manifest] == list(truth)
    assert all((out / "listings" / m["image_path"]).is_file() for m in manifest)


def test_boxes_lie_inside_their_photos_and_small_marks_are_small(bench):
    out, _, _ = bench
    for row in read_truth(out / "truth.csv").values():
        w, h = Image.open(out / "listings" / f"{row.listing_id}.jpg").size
        assert 640 <= max(w, h) <= 1024
        if row.tier == "none":
            assert row.box is None and row.brand == ""
            continue
        x0, y0, x1, y1 = row.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, row
        rel = max(x1 - x0, y1 - y0) / min(w, h)
        if row.tier == "small":
            assert rel < SMALL_MAX, row
        elif row.tier == "copy":
            assert rel >= 0.1, row  # pasted at 15-60% of the short side (rotation and perspective move the box a little)
        elif row.tier == "large":
            assert rel >= LARGE_MIN, row
        assert rel < MAX_SIZE, row


def test_truth_records_each_marks_size_and_band(bench):
    out, info, _ = bench
    truth = read_truth(out / "truth.csv")
    with open(out / "truth.csv", newline="") as f:
        written = {r["listing_id"]: r for r in csv.DictReader(f)}
    for row in truth.values():
        if row.tier == "none":
            assert row.size is None and row.band is None and written[row.listing_id]["band"] == ""
            continue
        w, h = Image.open(out / "listings" / f"{row.listing_id}.jpg").size
        x0, y0, x1, y1 = row.box
        assert row.size == pytest.approx(max(x1 - x0, y1 - y0) / min(w, h), abs=1e-4)
        lo, hi = (float(v) for v in row.band.split("-"))
        assert lo <= row.size < hi and written[row.listing_id]["band"] == row.band
    assert sum(info["listings_per_band"].values()) == sum(r.tier != "none" for r in truth.values())
    assert "large tier" in info["changes"]


def test_marks_span_every_size_band(tmp_path_factory):
    root = tmp_path_factory.mktemp("bands")
    src = write_sample_sources(root / "sources", brands=8, photos=2)
    build_realbench(src["marks"], [src["photos"]], root / "bench", cross_dir=src["cross"], cfg=BenchConfig(brands=4, listings=160, seed=3))
    truth = read_truth(root / "bench" / "truth.csv").values()
    assert {r.band for r in truth if r.tier != "none"} == set(BANDS)
    assert {r.band for r in truth if r.tier == "large"} <= {"0.55-0.65", "0.65-0.75", "0.75-0.85", "0.85-0.95"}
    assert max(r.size for r in truth if r.tier == "near") > LARGE_MIN  # not only the copies: variants and negatives come large too
    assert max(r.size for r in truth if r.tier == "unregistered") > LARGE_MIN


def test_size_band_edges():
    assert size_band(None) is None
    assert [size_band(v) for v in (0.01, 0.05, 0.1499, 0.15, 0.5, 0.95, 1.2)] == [
        "0.05-0.15", "0.05-0.15", "0.05-0.15", "0.15-0.25", "0.45-0.55", "0.85-0.95", "0.85-0.95"]
    assert len(BANDS) == 9 and BANDS[0] == "0.05-0.15" and BANDS[-1] == "0.85-0.95"


def test_registered_and_unregistered_brands_are_disjoint(bench):
    out, info, src = bench
    gallery = sorted(p.name for p in (out / "gallery").iterdir() if p.is_dir())
    assert gallery == info["gallery_brands"] and len(gallery) == 5
    assert all((out / "gallery" / b / f"{b}-original.png").is_file() for b in gallery)
    assert not set(info["unregistered_brands"]) & set(gallery)
    truth = read_truth(out / "truth.csv").values()
    for row in truth:
        if row.tier in ("copy", "small", "near", "cross"):
            assert row.brand in gallery, row
        elif row.tier == "unregistered":
            assert row.brand and row.brand not in gallery, row
    crossed = {r.brand for r in truth if r.tier == "cross"}
    glyphs = {p.stem for p in (src["cross"] / "icons").glob("*.svg")}
    assert crossed and crossed <= glyphs
    assert {r.variant for r in truth if r.tier == "near"} <= {"recolour", "mirror", "stretch", "crop", "occluded"}
    assert json.loads((out / "bench.json").read_text())["sources"]["marks"]["package"] == "devicon"


def test_same_seed_same_bench(bench, tmp_path):
    out, _, src = bench
    build_realbench(src["marks"], [src["photos"]], tmp_path / "again", cross_dir=src["cross"], cfg=BenchConfig(brands=5, listings=40, seed=1))
    assert (tmp_path / "again" / "truth.csv").read_text() == (out / "truth.csv").read_text()


def test_refuses_a_non_empty_out_and_a_missing_cross(bench, tmp_path):
    out, _, src = bench
    with pytest.raises(MarkguardError, match="not empty"):
        build_realbench(src["marks"], [src["photos"]], out, cross_dir=src["cross"])
    with pytest.raises(MarkguardError, match="--cross"):
        build_realbench(src["marks"], [src["photos"]], tmp_path / "b", cfg=BenchConfig(brands=5, listings=40))


def test_read_truth_takes_a_bench_without_sizes(tmp_path):
    p = tmp_path / "truth.csv"  # as written before size bands: the ten first columns
    p.write_text("listing_id,tier,brand,mark,variant,x0,y0,x1,y1,photo\nx,copy,a,a-original,exact,1,2,30,40,p\n")
    row = read_truth(p)["x"]
    assert row.box == (1, 2, 30, 40) and row.size is None and row.band is None


def test_read_truth_names_the_bad_line(tmp_path):
    p = tmp_path / "truth.csv"
    p.write_text("listing_id,tier,brand\nx,copy,a\n")
    with pytest.raises(MarkguardError, match="missing column"):
        read_truth(p)
    p.write_text("listing_id,tier,brand,mark,variant,x0,y0,x1,y1,photo\nx,big,a,a,exact,1,2,3,4,p\n")
    with pytest.raises(MarkguardError, match=r"truth.csv:2: tier 'big'"):
        read_truth(p)


def test_devicon_ids_are_slugs(tmp_path):
    for name in ("react", "dot-net", "Apple"):
        (tmp_path / "icons" / name).mkdir(parents=True)
        (tmp_path / "icons" / name / f"{name}-original.svg").write_text("<svg/>")
    (tmp_path / "icons" / "plainonly").mkdir()
    (tmp_path / "icons" / "plainonly" / "plainonly-plain.svg").write_text("<svg/>")
    assert [d.name for d in read_devicon(tmp_path)] == ["react"]


def test_photo_rules(tmp_path):
    root = tmp_path / "x"
    bg = root / "usr/share/backgrounds"
    bg.mkdir(parents=True)
    Image.new("RGB", (400, 320), (10, 200, 30)).save(bg / "photo.jpg")
    Image.new("L", (400, 320)).save(bg / "grey.jpg")
    Image.new("RGB", (200, 150)).save(bg / "tiny.jpg")
    keep, skipped = select_photos(root, "some-wallpapers")
    assert [p.name for p in keep] == ["photo.jpg"]
    assert {n for n, _ in skipped} == {"grey.jpg", "tiny.jpg"}
    data = root / "usr/share/doc/opencv-doc/examples/data"
    data.mkdir(parents=True)
    Image.new("RGB", (400, 320)).save(data / "LinuxLogo.jpg")
    Image.new("RGB", (400, 320)).save(data / "fruits.jpg")
    Image.new("RGB", (400, 320)).save(data / "pattern.png")
    keep, skipped = select_photos(root, "opencv-doc")
    assert [p.name for p in keep] == ["fruits.jpg"] and ("LinuxLogo.jpg", "a logo") in skipped
    got = fetch_photos([], tmp_path / "photos", debs={"opencv-doc": root})
    assert [p.relative_to(tmp_path / "photos").as_posix() for p in got.written] == ["opencv-doc/fruits.jpg"]


def test_reserved_sources_are_refused(tmp_path):
    with pytest.raises(MarkguardError, match="reserved"):
        fetch_photos(["gnome-backgrounds"], tmp_path)
    with pytest.raises(MarkguardError, match="reserved"):
        fetch_npm("@iconify-json/logos", tmp_path)


def test_fetch_npm_unpacks_a_local_archive(tmp_path):
    import tarfile

    src = write_sample_sources(tmp_path / "s", brands=2, photos=1)
    tgz = tmp_path / "devicon-0.0.0.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(src["marks"], arcname="package")
    package = fetch_npm("devicon", tmp_path / "out", archive=tgz)
    assert [d.name for d in read_devicon(package)] == ["brand00", "brand01"]
    with pytest.raises(MarkguardError, match="not found"):
        fetch_npm("devicon", tmp_path / "out2", archive=tmp_path / "nope.tgz")
