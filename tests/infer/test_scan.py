"""The scan end to end on a tiny dump: the results.jsonl contract, error rows, bad runs, formats, progress, several indexes.

``make_world`` (also used by the resume, ray and CLI tests) writes a synthetic dump with a few hostile
rows, a randomly initialised small checkpoint and an index built with it: seconds, no training.
"""

from __future__ import annotations

import csv
import io
import time
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from markguard.checkpoint import ModelCard, create_model, save_checkpoint
from markguard.errors import MarkguardError
from markguard.infer.build import build_index
from markguard.infer.scan import Progress, ScanOptions, run_scan
from markguard.infer.results import ROW_KEYS, check_rows

HOSTILE = {  # listing_id → (image_path, expected reason fragment)
    "X-empty": ("empty.jpg", ""),
    "X-text": ("notes.jpg", ""),
    "X-escape": ("../outside.jpg", "leaves the manifest's folder"),
    "X-missing": ("gone.jpg", "not found"),
}


@dataclass
class World:
    root: Path
    dump: Path  # manifest.csv
    gallery: Path
    model: Path
    index: Path
    n_rows: int


def make_model(out: Path, *, seed: int = 0, scan_size: int = 64, dim: int = 32, flag: float = 0.6) -> Path:
    torch.manual_seed(seed)
    card = ModelCard(backbone="resnet10t", dim=dim, input_size=48, scan_size=scan_size,
                     regions={"mode": "grid", "scales": [1.0, 0.5], "overlap": 0.0},
                     thresholds={"flag": flag, "review": flag - 0.1, "per_brand": {}})
    save_checkpoint(create_model(card), card, out)
    return out


def make_world(root: Path, *, listings: int = 10, hostile: bool = True, seed: int = 0) -> World:
    from markguard.datasets.synth import SynthConfig, synth_dataset

    root.mkdir(parents=True, exist_ok=True)
    synth_dataset(root / "synth", brands=3, marks_per_brand=1, distractor_brands=1, listings=listings, seed=seed,
                  cfg=SynthConfig(size=(160, 120)), sellers=4)
    listings_dir = root / "synth" / "listings"
    manifest = listings_dir / "manifest.csv"
    rows = list(csv.DictReader(manifest.open()))
    if hostile:
        (root / "synth" / "outside.jpg").write_bytes((listings_dir / rows[0]["image_path"]).read_bytes())
        (listings_dir / "empty.jpg").write_bytes(b"")
        (listings_dir / "notes.jpg").write_text("this is a text file, not a photo\n")
        bad = [{"listing_id": lid, "image_path": p, "seller_id": "S0001", "title": "bad"} for lid, (p, _) in HOSTILE.items()]
        rows = rows[:3] + bad[:2] + rows[3:6] + bad[2:] + rows[6:]
        with manifest.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["listing_id", "image_path", "seller_id", "title"])
            w.writeheader()
            w.writerows(rows)
    model = make_model(root / "model")
    build_index(root / "synth" / "gallery", root / "index", model=model, device="cpu")
    return World(root, manifest, root / "synth" / "gallery", model, root / "index", len(rows))


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    return make_world(tmp_path_factory.mktemp("scan-world"))


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def manifest_order(world: World) -> list[tuple[str, str]]:
    return [(r["listing_id"], r["image_path"]) for r in csv.DictReader(world.dump.open())]


OPTS = ScanOptions(batch_size=4, workers=1, device="cpu")


@pytest.fixture(scope="session")
def scanned(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scan-out") / "out"
    run_scan(world.dump, [world.index], out, opts=OPTS, progress=False)
    return out


def test_rows_follow_the_contract_in_input_order(world, scanned):
    rows = read_rows(scanned)
    assert [(r["listing_id"], r["image"]) for r in rows] == manifest_order(world)
    check_rows(scanned / "results.jsonl")
    for r in rows:
        assert tuple(r) == ROW_KEYS
        assert r["status"] in {"flag", "review", "pass", "allowed", "error"}
        if r["status"] == "error":
            assert r["error"] and r["score"] is None and r["matches"] == []
            continue
        assert r["error"] is None and isinstance(r["score"], float)
        if r["status"] in ("flag", "review", "allowed"):
            assert r["brand"] and r["mark"] and len(r["box"]) == 4
            # the match that decided (the best one, unless a better one was the seller's own brand)
            assert {"brand": r["brand"], "mark": r["mark"], "score": r["score"], "box": r["box"]} in [
                {k: m[k] for k in ("brand", "mark", "score", "box")} for m in r["matches"]]
        w, h = Image.open(world.dump.parent / r["image"]).size  # 160x120 or 120x160
        for m in r["matches"]:
            # no "index" key with one index; "evidence" for the candidates verification checked (the default where OpenCV is)
            assert {"brand", "mark", "score", "box"} <= set(m) <= {"brand", "mark", "score", "box", "evidence"}
            # verification's keys, and OCR's where RapidOCR is installed (text read by default)
            assert set(m.get("evidence", {})) <= {"similarity", "inliers", "coverage", "verified", "outline",
                                                  "text", "text_brand", "text_distance", "text_error"}
            x0, y0, x1, y1 = m["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h  # original pixels of the photo
        assert [m["score"] for m in r["matches"]] == sorted((m["score"] for m in r["matches"]), reverse=True)


def test_hostile_rows_are_error_rows_with_reasons(world, scanned):
    by_id = {r["listing_id"]: r for r in read_rows(scanned)}
    for lid, (_, reason) in HOSTILE.items():
        assert by_id[lid]["status"] == "error", lid
        assert reason in by_id[lid]["error"]
    assert all(r["status"] != "error" for lid, r in by_id.items() if not lid.startswith("X-"))


def test_summary_counts_policy_and_stages(world, scanned):
    s = json.loads((scanned / "summary.json").read_text())
    rows = read_rows(scanned)
    assert s["images"] == len(rows) == world.n_rows
    assert s["counts"]["error"] == len(HOSTILE)
    assert sum(s["counts"].values()) == len(rows)
    assert s["policy"]["flag"] == pytest.approx(0.6) and s["policy"]["sources"]["flag"] == "model card"
    assert set(s["stage_seconds"]) >= {"decode", "regions", "embed", "search", "decide", "write"}
    assert s["stage_seconds"]["embed"] > 0
    assert s["indexes"][0]["fingerprint"] == s["model"]["fingerprint"]
    assert not list(scanned.glob("*.partial")) and not list(scanned.glob(".*tmp*"))


def test_flag_threshold_override_changes_decisions(world, tmp_path):
    def best(r):  # the best similarity in the photo (a row's own score is the deciding match's)
        return r["matches"][0]["score"] if r["matches"] else r["score"]

    # the thresholds alone decide: no verification or text, whose evidence rules lower or raise a candidate
    plain = dict(batch_size=4, workers=0, verify=False, ocr=False)
    run_scan(world.dump, [world.index], tmp_path / "base", opts=ScanOptions(**plain), progress=False)
    base = read_rows(tmp_path / "base")
    scores = sorted(best(r) for r in base if r["score"] is not None)
    cut = float(np.median(scores))
    out = tmp_path / "o"
    run_scan(world.dump, [world.index], out, opts=ScanOptions(**plain, flag=cut, review=cut - 0.01), progress=False)
    statuses = set()
    for a, b in zip(base, read_rows(out)):
        assert b["status"] == "error" or best(a) == best(b)
        if b["status"] != "error":
            statuses.add(b["status"])
            assert (b["status"] == "pass") == (best(b) < cut - 0.01)
            assert all(m["score"] >= cut - 0.01 for m in b["matches"])
    assert "pass" in statuses and statuses & {"flag", "allowed"}


def test_finished_scan_rerun_is_a_noop(world, scanned):
    before = (scanned / "results.jsonl").read_bytes(), (scanned / "summary.json").read_bytes()
    summary = run_scan(world.dump, [world.index], scanned, opts=OPTS, progress=False)
    assert summary["note"] == "already finished; nothing to do"
    assert ((scanned / "results.jsonl").read_bytes(), (scanned / "summary.json").read_bytes()) == before


def test_output_folder_of_another_scan_is_refused(world, scanned, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("listing_id,image_path\n")
    with pytest.raises(MarkguardError, match="another scan"):
        run_scan(world.dump, [world.index], scanned, opts=ScanOptions(shard=(0, 2)), progress=False)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(MarkguardError, match="not empty"):
        run_scan(world.dump, [world.index], stranger, opts=OPTS, progress=False)


def test_missing_column_and_wrong_model_are_run_errors(world, tmp_path):
    bad = world.dump.parent / "bad-manifest.csv"
    bad.write_text("listing_id,path\nL1,a.jpg\n")
    with pytest.raises(MarkguardError, match="image_path"):
        run_scan(bad, [world.index], tmp_path / "a", opts=OPTS, progress=False)
    other = make_model(tmp_path / "other-model", seed=1)
    with pytest.raises(MarkguardError, match="built by model"):
        run_scan(world.dump, [world.index], tmp_path / "b", model=other, opts=OPTS, progress=False)
    assert not (tmp_path / "a" / "results.jsonl").exists() and not (tmp_path / "b" / "results.jsonl").exists()


def test_parquet_has_the_same_rows(world, scanned, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "pq"
    s = run_scan(world.dump, [world.index], out, opts=OPTS, progress=False, formats=("jsonl", "parquet"))
    table = pq.read_table(out / "results.parquet")
    assert s["parquet"] == str(out / "results.parquet")
    assert table.column_names == list(ROW_KEYS)
    rows = read_rows(out)
    got = table.to_pylist()
    assert [r["listing_id"] for r in got] == [r["listing_id"] for r in rows]
    for a, b in zip(got, rows):
        assert a["status"] == b["status"] and a["score"] == b["score"] and a["box"] == b["box"]
        assert [(m["brand"], m["mark"], m["score"]) for m in a["matches"]] == [(m["brand"], m["mark"], m["score"]) for m in b["matches"]]


def test_progress_log_line_off_a_terminal(world, tmp_path):
    stream = io.StringIO()
    run_scan(world.dump, [world.index], tmp_path / "p", opts=OPTS, progress_stream=stream, progress_every_s=0.0)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2  # one per written batch, and the last one at the end
    last = lines[-1]
    import re

    m = re.fullmatch(r"scan: (\d+)/(\d+) images, ([\d.]+) img/s, ETA (\d+)s, flagged (\d+)", last)
    assert m, last
    assert int(m.group(1)) == int(m.group(2)) == world.n_rows and float(m.group(3)) > 0 and m.group(4) == "0"
    flagged = sum(r["status"] == "flag" for r in read_rows(tmp_path / "p"))
    assert int(m.group(5)) == flagged


def test_progress_eta():
    p = Progress(total=100, done=0, stream=io.StringIO(), every_s=1e9)
    p.t0 -= 10  # 10 s ago
    p.update(50, 3)
    assert p.line() == "scan: 50/100 images, 5.0 img/s, ETA 10s, flagged 3"


def test_several_indexes_in_one_pass(world, scanned, tmp_path):
    # a second index built with its own model: each match names its index, photos are decoded once
    other_model = make_model(tmp_path / "model-b", seed=3, scan_size=96, flag=0.7)
    logos = tmp_path / "logos"
    build_index(world.gallery, logos, model=other_model, device="cpu")
    out = tmp_path / "multi"
    s = run_scan(world.dump, [world.index, logos], out, opts=OPTS, progress=False)
    assert [i["name"] for i in s["indexes"]] == ["index", "logos"]
    assert s["policy"]["per_index"] == {"index": {"flag": 0.6, "review": pytest.approx(0.5)}, "logos": {"flag": 0.7, "review": pytest.approx(0.6)}}
    rows = read_rows(out)
    assert [(r["listing_id"], r["image"]) for r in rows] == manifest_order(world)
    single = {r["listing_id"]: r for r in read_rows(scanned)}
    seen = set()
    for r in rows:
        for m in r["matches"]:
            assert m["index"] in ("index", "logos")
            seen.add(m["index"])
        # the first index's matches are those of the single-index scan; scores move a little, as the photo is
        # decoded once at the larger model's scan size and resized for this one
        mine = [(m["brand"], m["score"]) for m in r["matches"] if m["index"] == "index"]
        alone = [(m["brand"], m["score"]) for m in single[r["listing_id"]]["matches"]][: len(mine)]
        assert [b for b, _ in mine] == [b for b, _ in alone]
        assert [s for _, s in mine] == pytest.approx([s for _, s in alone], abs=0.02)
    assert seen == {"index", "logos"}


def test_stage_times_take_new_stages():
    from markguard.infer.scan import StageTimes

    times = StageTimes()
    times.add("evidence", time.perf_counter() - 0.5)  # a stage this module never heard of
    times.merge({"evidence": 0.25, "decode": 1.0})
    assert times.seconds["evidence"] == pytest.approx(0.75, abs=0.05) and times.seconds["decode"] == 1.0


def test_unknown_region_mode_in_a_model_card_is_one_line(world, tmp_path):
    from markguard.checkpoint import load_checkpoint

    model = tmp_path / "model"
    card = ModelCard(backbone="resnet10t", dim=32, input_size=48, scan_size=64, regions={"mode": "everywhere"})
    save_checkpoint(create_model(card), card, model)  # a card from elsewhere: its fingerprint is sound
    try:
        load_checkpoint(model)
    except MarkguardError as e:  # a card check at load time is just as good: one line naming the field
        assert "regions" in str(e) and "\n" not in str(e)
        return
    index = tmp_path / "index"
    build_index(world.gallery, index, model=model, device="cpu")
    with pytest.raises(MarkguardError) as e:
        run_scan(world.dump, [index], tmp_path / "out", opts=OPTS, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "regions.mode" in msg and "everywhere" in msg and "learned+grid" in msg
    assert str(model / "model_card.json") in msg


def _recorded_queries(searchers) -> dict[str, list]:
    """Wrap each searcher's index so every query vector it is searched with is kept, by index name."""
    seen = {}
    for s in searchers:
        seen[s.path.name] = []

        def search(q, k, _orig=s.index.search, _keep=seen[s.path.name]):
            _keep.append(np.array(q))
            return _orig(q, k)

        s.index.search = search
    return seen


def test_each_index_sees_photos_normalised_by_its_own_card(world, tmp_path):
    # two models whose cards differ in mean/std (same scan size): each one's region embeddings in a
    # two-index scan must be those of a scan with its index alone
    from markguard.infer.scan import load_searchers, resolve_policy, scan_rows

    torch.manual_seed(7)
    card = ModelCard(backbone="resnet10t", dim=32, input_size=48, scan_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.3, 0.2),
                     regions={"mode": "grid", "scales": [1.0, 0.5], "overlap": 0.0})
    save_checkpoint(create_model(card), card, tmp_path / "model-b")
    other = tmp_path / "other"
    build_index(world.gallery, other, model=tmp_path / "model-b", device="cpu")
    opts = ScanOptions(batch_size=4, workers=0, device="cpu")

    def queries(paths):
        searchers = load_searchers(paths, None, "cpu")
        seen = _recorded_queries(searchers)
        policy = resolve_policy(searchers[0].card.thresholds, {})
        list(scan_rows(world.dump, searchers, policy, opts))
        return {name: np.concatenate(v) for name, v in seen.items()}

    both = queries([world.index, other])
    for name, path in (("index", world.index), ("other", other)):
        alone = queries([path])[name]
        assert both[name].shape == alone.shape
        np.testing.assert_allclose(both[name], alone, atol=1e-4)
