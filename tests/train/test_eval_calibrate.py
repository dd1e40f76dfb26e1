"""`markguard eval` and `markguard calibrate` on a tiny model, and their threshold arithmetic against brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest

from markguard.checkpoint import load_card, load_checkpoint
from markguard.cli import main
from markguard.errors import MarkguardError
from markguard.train.calibrate import calibrate_listings
from markguard.train.rates import roc_auc, threshold_at_fpr, threshold_at_precision
from markguard.infer.results import Match
from markguard.train.evaluate import EvalConfig, evaluate_model, localisation_metrics, retrieval_metrics, size_bucket


def test_threshold_at_precision_matches_brute_force():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(60), 2)  # rounded: ties
    good = rng.random(60) < scores
    for target in (0.5, 0.7, 0.9):
        best = None
        for t in np.unique(scores):
            sel = scores >= t
            if good[sel].mean() >= target and (best is None or t < best):
                best = t
        assert threshold_at_precision(scores, good, target) == best


def test_threshold_at_fpr_and_auc():
    neg = np.linspace(0, 0.99, 100)
    t = threshold_at_fpr(neg, 0.05)
    assert (neg >= t).mean() <= 0.05 and (neg >= t - 0.011).mean() > 0.05
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    pos, negs = np.round(rng.normal(1, 1, 50), 1), np.round(rng.normal(0, 1, 70), 1)
    assert roc_auc(pos, negs) == pytest.approx(roc_auc_score([1] * 50 + [0] * 70, np.concatenate([pos, negs])))


def test_retrieval_metrics_by_hand():
    refs = np.eye(3, dtype=np.float32)
    q = np.array([[1, 0, 0], [0, 0.9, 0.1], [0.8, 0.1, 0.6]], dtype=np.float32)  # third: nearest is mark 0, truth is 2
    m = retrieval_metrics(q, np.array([0, 1, 2]), refs, np.array([0, 1, 2]))
    assert m["recall@1"] == pytest.approx(2 / 3) and m["precision@1"] == pytest.approx(2 / 3)
    assert m["recall@5"] == 1.0 and m["map@r"] == pytest.approx(2 / 3)


def _listing(best, shown, allowed=()):
    return {"listing": "x", "best": best, "shown": set(shown), "allowed": set(allowed)}


def test_calibrate_listings_global_and_per_brand():
    scored = [_listing({"a": 0.9}, ["a"]) for _ in range(6)] + [_listing({"b": 0.5}, ["b"]) for _ in range(6)]
    scored += [_listing({"a": 0.3 + 0.01 * i, "b": 0.2}, []) for i in range(20)]
    scored += [_listing({"b": 0.45}, [])]  # the hardest negative: b-like
    scored += [_listing({"a": 0.95}, [], allowed=["a"])]  # an authorized seller: not a negative for a
    cal = calibrate_listings(scored, ["a", "b"], target_fpr=0.04)
    assert cal.flag > 0.45 - 1e-9 and cal.report["at_flag"]["fpr"] <= 0.04
    assert cal.report["at_flag"]["tpr"] == 1.0
    assert set(cal.per_brand) == {"a", "b"}
    assert cal.per_brand["a"] < 0.9 and cal.per_brand["b"] <= 0.5
    assert cal.review <= cal.flag
    prec = calibrate_listings(scored, ["a", "b"], target_precision=0.99, min_positives=100)
    assert prec.per_brand == {} and prec.report["at_flag"]["precision"] >= 0.99
    with pytest.raises(MarkguardError, match="exactly one"):
        calibrate_listings(scored, ["a"], target_fpr=0.1, target_precision=0.9)
    with pytest.raises(MarkguardError, match="0 positive"):
        calibrate_listings([_listing({}, [])], ["a"], target_fpr=0.1)


@pytest.mark.slow
def test_eval_writes_metrics_and_plots(tiny_model, tmp_path):
    card = load_card(tiny_model)
    assert len(card.training["holdout_brands"]) == 3
    ec = EvalConfig(queries_per_mark=2, listings=24, listing_size=(96, 72))
    m = evaluate_model(tiny_model, tmp_path / "ev", ec=ec, write_card=True, log=lambda s: None)
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["brands"] == card.training["holdout_brands"] and saved["marks"] == 6
    r = saved["retrieval"]
    assert 0 <= r["recall@1"] <= r["recall@5"] <= 1 and 0 <= r["map@r"] <= 1
    d = saved["detection"]
    assert d["listings"] == 24 and d["positives"] + d["negatives"] == 24 and 0 <= d["roc_auc"] <= 1
    assert set(saved["per_brand"]) == set(card.training["holdout_brands"])
    loc = saved["localisation"]
    assert sum(loc[b]["listings"] for b in ("small", "medium", "large")) == d["positives"]
    assert loc["all"]["identified"] == sum(loc[b]["identified"] for b in ("small", "medium", "large"))
    for png in m["plots"]:
        assert (tmp_path / "ev" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    after = load_card(tiny_model)
    assert after.metrics["heldout"]["retrieval"] == saved["retrieval"]
    load_checkpoint(tiny_model)  # the card edit left the fingerprint valid


def test_size_buckets_follow_the_short_side():
    assert size_bucket((0, 0, 14, 5), (400, 100)) == "small"  # 14 / 100
    assert size_bucket((0, 0, 5, 15), (100, 400)) == "medium"
    assert size_bucket((0, 0, 60, 40), (200, 100)) == "large"


def test_localisation_metrics_by_hand():
    small, large = (10, 10, 20, 20), (0, 0, 60, 60)  # on a 100x100 photo: 10% and 60% of the short side
    listings = [
        # small mark found, box IoU 1
        {"size": (100, 100), "marks": [("a", small)], "score": 0.9, "matches": [Match("a", "a1", 0.9, list(small))]},
        # small mark: right brand, but the box is elsewhere (IoU 0)
        {"size": (100, 100), "marks": [("a", small)], "score": 0.8, "matches": [Match("a", "a1", 0.8, [50, 50, 60, 60])]},
        # large mark: the wrong brand above threshold, the right one below it -> not identified, but the listing is detected
        {"size": (100, 100), "marks": [("b", large)], "score": 0.9,
         "matches": [Match("c", "c1", 0.9, list(large)), Match("b", "b1", 0.3, list(large))]},
        # large mark missed entirely
        {"size": (100, 100), "marks": [("b", large)], "score": 0.2, "matches": []},
        # no registered mark: counts nowhere
        {"size": (100, 100), "marks": [], "score": 0.95, "matches": [Match("a", "a1", 0.95, [0, 0, 5, 5])]},
    ]
    m = localisation_metrics(listings, threshold=0.5)
    assert m["small"] == {"marks": 2, "identified": 2, "hit_rate": 0.5, "box_iou50": 0.5, "mean_iou": 0.5, "listings": 2, "tpr@fpr1%": 1.0}
    assert m["large"]["marks"] == 2 and m["large"]["identified"] == 0 and m["large"]["hit_rate"] == 0.0
    assert m["large"]["box_iou50"] is None and m["large"]["tpr@fpr1%"] == 0.5
    assert m["medium"]["marks"] == 0 and m["medium"]["tpr@fpr1%"] is None
    assert m["all"] == {"identified": 2, "box_iou50": 0.5}


def test_eval_without_holdout_refused(tmp_path, gallery):
    from trainkit import tiny_config

    from markguard.train.loop import train

    train(tiny_config(gallery, steps=1), tmp_path / "m")
    with pytest.raises(MarkguardError, match="no held-out brands"):
        evaluate_model(tmp_path / "m", tmp_path / "ev")


@pytest.mark.slow
def test_calibrate_cli_writes_beside_the_index_and_scan_uses_it(tiny_model, tmp_path, gallery8, capsys):
    import hashlib
    import json
    import shutil

    from markguard.checkpoint import DEFAULT_MODEL_DIR
    from markguard.datasets.synth import SynthConfig, synth_dataset
    from markguard.infer.build import build_index
    from markguard.infer.scan import run_scan

    def shipped():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(DEFAULT_MODEL_DIR.iterdir()) if p.is_file()}

    package_before = shipped()
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    data = synth_dataset(tmp_path / "val", brands=4, marks_per_brand=1, distractor_brands=2, listings=40, seed=3,
                         cfg=SynthConfig(size=(96, 72)))
    build_index(data["gallery"], tmp_path / "idx", model=model, kind="flat", device="cpu")
    run_scan(data["listings"] / "manifest.csv", [tmp_path / "idx"], tmp_path / "scan", model=model, progress=False)
    before = load_card(model)
    rc = main(["calibrate", str(tmp_path / "scan"), "--truth", str(data["truth"]), "--model", str(model),
               "--target-fpr", "0.1", "--min-positives", "3", "--device", "cpu"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "a small sample" in err  # 40 listings: the thresholds are a guess, and calibrate says so
    after = load_card(model)
    assert after == before  # the model's card is not written
    written = json.loads((tmp_path / "idx" / "thresholds.json").read_text())
    assert written["model_fingerprint"] == before.fingerprint and written["fitted"]["target"] == {"fpr": 0.1}
    assert written["fitted"]["at_flag"]["fpr"] <= 0.1
    summary = run_scan(data["listings"] / "manifest.csv", [tmp_path / "idx"], tmp_path / "scan2", model=model, progress=False)
    assert summary["policy"]["flag"] == written["flag"] and summary["policy"]["sources"]["flag"].endswith("thresholds.json")
    assert {k.removeprefix("brand:") for k in summary["policy"]["sources"] if k.startswith("brand:")} >= set(written["per_brand"])
    # --out names another folder; the installed package is refused, and left as it was
    main(["calibrate", str(tmp_path / "scan"), "--truth", str(data["truth"]), "--out", str(tmp_path / "mine"), "--device", "cpu"])
    assert (tmp_path / "mine" / "thresholds.json").is_file()
    with pytest.raises(MarkguardError, match="shipped weights"):
        main_raising(["calibrate", str(tmp_path / "scan"), "--truth", str(data["truth"]), "--out", str(DEFAULT_MODEL_DIR)])
    assert shipped() == package_before
    # a scan made with another model is refused: its scores would calibrate the wrong thresholds
    (tmp_path / "scan" / "summary.json").write_text((tmp_path / "scan" / "summary.json").read_text().replace(after.fingerprint, "0" * 16))
    with pytest.raises(MarkguardError, match="calibrate with the scan's model"):
        main_raising(["calibrate", str(tmp_path / "scan"), "--truth", str(data["truth"]), "--model", str(model)])


def main_raising(argv):
    from markguard.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.func(args)


def test_eval_cli(tiny_model, tmp_path, capsys):
    rc = main(["eval", "--model", str(tiny_model), "--out", str(tmp_path / "ev"), "--listings", "6", "--queries-per-mark", "1",
               "--no-plots", "--device", "cpu"])
    assert rc == 0
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["detection"]["listings"] == 6 and "plots" not in saved
    assert main(["eval", "--model", str(tiny_model), "--out", str(tmp_path / "ev2"), "--listings", "0"]) == 2
    assert "--listings and --queries-per-mark must be at least 1" in capsys.readouterr().err
