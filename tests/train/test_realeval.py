"""Real-photo benchmark scoring: each tier against a brute-force recount, the hub figure, bad results, and the CLI end to end."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from markguard.boxes import iou
from markguard.datasets.realbench import BANDS, COPY_TIERS, POSITIVE_TIERS, TIERS, TRUTH_COLUMNS, size_band
from markguard.errors import MarkguardError
from markguard.infer.results import ScanRow
from markguard.train.realeval import hub_figure, score_bench


def write_truth(path, rows, sizes=None):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TRUTH_COLUMNS if sizes else TRUTH_COLUMNS[:10])  # without sizes: a bench built before size bands
        for lid, tier, brand, box in rows:
            size = (sizes or {}).get(lid)
            w.writerow([lid, tier, brand, f"{brand}-original" if brand else "", "exact" if brand else "", *(box or ["", "", "", ""]), "p.jpg",
                        *([] if not sizes else ["" if size is None else size, size_band(size) or ""])])


def write_results(path, rows):
    with open(path, "w") as f:
        for lid, score, brand, box in rows:
            f.write(json.dumps({"listing_id": lid, "image": f"{lid}.jpg", "seller_id": None, "status": "flag", "score": score, "brand": brand,
                                "mark": f"{brand}-original" if brand else None, "box": box, "matches": [], "error": None}) + "\n")


def test_hand_made_case(tmp_path):
    truth = [("c0", "copy", "a", [0, 0, 10, 10]), ("c1", "copy", "b", [0, 0, 10, 10]), ("c2", "copy", "a", [0, 0, 10, 10]),
             ("s0", "small", "a", [0, 0, 4, 4]), ("u0", "unregistered", "zz", [5, 5, 9, 9]), ("n0", "none", "", None)]
    results = [("c0", 0.9, "a", [0, 0, 10, 10]),  # flagged, right brand, IoU 1
               ("c1", 0.8, "a", [0, 0, 10, 10]),  # flagged, wrong brand
               ("c2", 0.7, "a", [20, 20, 30, 30]),  # flagged, right brand, box elsewhere
               ("s0", 0.4, "a", [0, 0, 4, 4]),  # below the threshold
               ("u0", 0.5, "a", None), ("n0", 0.3, "b", None)]
    write_truth(tmp_path / "truth.csv", truth)
    write_results(tmp_path / "results.jsonl", results)
    s = score_bench(tmp_path / "results.jsonl", tmp_path / "truth.csv")
    assert s.threshold == pytest.approx(0.5001)  # 2 negatives: FPR 1% flags none of them
    assert (s.tiers["copy"].listings, s.tiers["copy"].flagged, s.tiers["copy"].right_brand) == (3, 1.0, pytest.approx(2 / 3))
    assert s.tiers["copy"].box_iou50 == 0.5
    assert (s.tiers["small"].flagged, s.tiers["small"].right_brand, s.tiers["small"].box_iou50) == (0.0, 0.0, None)
    assert s.tiers["unregistered"].flagged == 0.0 and s.tiers["none"].right_brand is None
    assert s.tiers["near"].listings == 0 and s.tiers["near"].flagged is None
    assert s.all_positive.listings == 4 and s.all_positive.flagged == 0.75
    assert s.roc_auc == pytest.approx(7 / 8)  # s0 (0.4) is beaten by u0 (0.5): 7 of the 8 pairs are ordered
    # photos whose best match they do not show: c1 (a), u0 (a), n0 (b)
    assert (s.hub.photos, s.hub.reference, s.hub.count, s.hub.distinct) == (3, "a/a-original", 2, 2)


def brute_force(truth, results, fpr=0.01):
    neg = [results[lid][0] for lid, tier, _, _ in truth if tier not in POSITIVE_TIERS]
    # the smallest threshold among the candidates whose FPR is at most fpr
    t = min(c for c in [v + 1e-4 for v in neg] + [max(neg) + 1e-4] if sum(v >= c for v in neg) <= fpr * len(neg))
    out = {}
    for tier in TIERS:
        n = flagged = named = boxed = 0
        for lid, tr, brand, box in truth:
            if tr != tier:
                continue
            score, rb, rbox = results[lid]
            n += 1
            if score >= t:
                flagged += 1
                if tier in POSITIVE_TIERS and rb == brand:
                    named += 1
                    boxed += rbox is not None and iou(rbox, box) >= 0.5
        out[tier] = (n, flagged / n, named / n if tier in POSITIVE_TIERS else None,
                     (boxed / named if named else None) if tier in POSITIVE_TIERS else None)
    return t, out


def test_every_tier_matches_a_brute_force_recount(tmp_path):
    rng = np.random.default_rng(0)
    brands = ["a", "b", "c", "d"]
    truth, results = [], []
    for i in range(400):
        tier = TIERS[i % len(TIERS)]
        brand = "" if tier == "none" else ("x" if tier == "unregistered" else brands[int(rng.integers(4))])
        box = None if tier == "none" else [10, 10, 60, 60]
        truth.append((f"L{i}", tier, brand, box))
        pos = tier in POSITIVE_TIERS
        score = float(rng.normal(0.7 if pos else 0.5, 0.1))
        rbrand = brand if pos and rng.random() < 0.6 else brands[int(rng.integers(4))]
        rbox = [10 + int(rng.integers(0, 40)), 10, 60 + int(rng.integers(0, 40)), 60]
        results.append((f"L{i}", score, rbrand, rbox))
    write_truth(tmp_path / "truth.csv", truth)
    write_results(tmp_path / "results.jsonl", results)
    s = score_bench(tmp_path / "results.jsonl", tmp_path / "truth.csv")
    t, expected = brute_force(truth, {lid: (sc, b, bx) for lid, sc, b, bx in results})
    assert s.threshold == pytest.approx(t)
    for tier in TIERS:
        got = s.tiers[tier]
        assert (got.listings, got.flagged, got.right_brand, got.box_iou50) == pytest.approx(expected[tier]), tier


def test_every_size_band_matches_a_brute_force_recount(tmp_path):
    rng = np.random.default_rng(1)
    truth, results, sizes = [], [], {}
    for i in range(700):
        tier = TIERS[i % len(TIERS)]
        brand = "" if tier == "none" else ("x" if tier == "unregistered" else "abcd"[int(rng.integers(4))])
        truth.append((f"L{i}", tier, brand, None if tier == "none" else [10, 10, 60, 60]))
        if tier != "none":
            sizes[f"L{i}"] = round(float(rng.uniform(0.05, 0.95)), 4)
        pos = tier in POSITIVE_TIERS
        # big marks score lower here, as a scan at one scale does: the bands must show it
        score = float(rng.normal((0.8 - 0.3 * sizes[f"L{i}"]) if pos else 0.5, 0.1))
        results.append((f"L{i}", score, brand if pos and rng.random() < 0.7 else "d", [10, 10, 60, 60]))
    write_truth(tmp_path / "truth.csv", truth, sizes)
    write_results(tmp_path / "results.jsonl", results)
    s = score_bench(tmp_path / "results.jsonl", tmp_path / "truth.csv")
    by = {lid: (sc, b) for lid, sc, b, _ in results}
    for group, members in (("copies", COPY_TIERS), ("positives", POSITIVE_TIERS), ("unregistered", ("unregistered",))):
        for band in BANDS:
            ids = [(lid, brand) for lid, tier, brand, _ in truth if tier in members and size_band(sizes.get(lid)) == band]
            got = s.bands[group][band]
            flagged = [by[lid][0] >= s.threshold for lid, _ in ids]
            assert got.listings == len(ids) and got.flagged == pytest.approx(np.mean(flagged)), (group, band)
            if group == "unregistered":
                assert got.right_brand is None
            else:
                assert got.right_brand == pytest.approx(np.mean([f and by[lid][1] == b for f, (lid, b) in zip(flagged, ids)]))
    low, high = s.bands["copies"][BANDS[0]].flagged, s.bands["copies"][BANDS[-1]].flagged
    assert low > high
    table = s.band_table()
    assert table[0].count("|") == len(BANDS) + 2 and any(line.startswith("| copies TPR / right") for line in table)
    # a bench without sizes in its truth scores as before, with no bands
    write_truth(tmp_path / "old.csv", truth)
    assert score_bench(tmp_path / "results.jsonl", tmp_path / "old.csv").bands == {}


def test_hub_figure_counts_only_photos_that_do_not_show_their_best_match():
    row = lambda b, status="flag": ScanRow("x", "x.jpg", None, status, 0.5, b, b and f"{b}-m", None, [])  # noqa: E731
    pairs = [(None, row("a")), (None, row("a")), (None, row("b")), ("c", row("a")), ("a", row("a")), ("a", row("a")),
             (None, row(None, "error"))]
    hub = hub_figure(pairs)
    assert (hub.photos, hub.reference, hub.count, hub.distinct) == (4, "a/a-m", 3, 2)
    assert hub.share == 0.75 and hub.top == [("a/a-m", 3), ("b/b-m", 1)]
    assert hub_figure([("a", row("a"))]).photos == 0


def test_results_that_hide_best_matches_or_miss_listings_are_refused(tmp_path):
    write_truth(tmp_path / "truth.csv", [("c0", "copy", "a", [0, 0, 5, 5]), ("n0", "none", "", None)])
    write_results(tmp_path / "results.jsonl", [("c0", 0.9, "a", None)])
    with pytest.raises(MarkguardError, match="no row for 1 of the bench's 2 listings"):
        score_bench(tmp_path / "results.jsonl", tmp_path / "truth.csv")
    with open(tmp_path / "results.jsonl", "a") as f:  # a scan at its calibrated thresholds: a pass row names no match
        f.write(json.dumps({"listing_id": "n0", "image": "n0.jpg", "seller_id": None, "status": "pass", "score": 0.4, "brand": None,
                            "mark": None, "box": None, "matches": [], "error": None}) + "\n")
    with pytest.raises(MarkguardError, match="--flag-threshold -1"):
        score_bench(tmp_path / "results.jsonl", tmp_path / "truth.csv")


def test_cli_builds_a_bench_and_evaluates_a_model_on_it(tmp_path, tiny_world, capsys):
    from markguard.checkpoint import load_card, load_checkpoint
    from markguard.cli import main
    from markguard.datasets.realbench import write_sample_sources

    src = write_sample_sources(tmp_path / "src", brands=10, photos=2)
    assert main(["data", "photos", "--deb", f"sample={src['photos'] / 'sample'}", "--out", str(tmp_path / "photos")]) == 2  # no photo root
    bench = tmp_path / "bench"
    assert main(["data", "realbench", "--marks", str(src["marks"].parent), "--cross", str(src["cross"]), "--photos", str(src["photos"]),
                 "--out", str(bench), "--brands", "4", "--listings", "33"]) == 0
    assert "4 registered brands" in capsys.readouterr().out
    model = tmp_path / "model"
    shutil.copytree(tiny_world["model"], model)
    before = load_card(model).fingerprint
    assert main(["eval", "--bench", str(bench), "--model", str(model), "--out", str(tmp_path / "eval"), "--device", "cpu", "--write-card"]) == 0
    real = json.loads((tmp_path / "eval" / "real.json").read_text())
    assert set(real["tiers"]) == set(TIERS) and real["listings_per_tier"]["copy"] == 6
    assert set(real["bands"]) == {"copies", "positives", "unregistered"}
    assert sum(c["listings"] for c in real["bands"]["positives"].values()) == real["positives"]
    assert sum(json.loads(line)["status"] != "error" for line in open(tmp_path / "eval" / "scan" / "results.jsonl")) == 33
    card = load_card(model)
    assert card.metrics["real"]["tiers"]["copy"] == {k: real["tiers"]["copy"][k] for k in ("flagged", "right_brand", "box_iou50")}
    # metrics lie outside the fingerprint: the card still matches its weights, and indexes and combiners fitted for it still hold
    assert card.fingerprint == before and load_checkpoint(model)[1].fingerprint == before
    assert "| copy |" in capsys.readouterr().out
    assert main(["eval", "--bench", str(tmp_path / "nowhere"), "--model", str(model), "--out", str(tmp_path / "e2")]) == 2
