"""The shipped default logo model: small enough to ship, loads without unpickling, carries its held-out
metrics, and is what `index build` and `scan` use when no model is named."""

from __future__ import annotations

import json

from markguard.checkpoint import CARD, DEFAULT_MODEL_DIR, WEIGHTS, load_card, load_checkpoint, resolve_model_dir
from markguard.cli import main

MAX_BYTES = 25 * 1024 * 1024


def test_default_model_is_shipped_small_and_intact():
    assert resolve_model_dir(None) == DEFAULT_MODEL_DIR
    size = (DEFAULT_MODEL_DIR / WEIGHTS).stat().st_size + (DEFAULT_MODEL_DIR / CARD).stat().st_size
    assert size <= MAX_BYTES, f"{size / 2**20:.1f} MB"
    model, card = load_checkpoint(None)  # the fingerprint over weights + preprocessing must verify
    assert model.proposal_head is not None and card.regions["mode"].startswith("learned")
    assert not model.training


def test_default_model_card_records_its_training_and_held_out_metrics():
    card = load_card(DEFAULT_MODEL_DIR)
    held = card.training["holdout_brands"]
    assert len(held) >= 50
    m = card.metrics["heldout"]
    assert m["brands"] == sorted(held) and m["marks"] >= len(held)
    assert 0 < m["retrieval"]["recall@1"] <= m["retrieval"]["recall@5"] <= 1
    assert 0.5 < m["detection"]["roc_auc"] <= 1  # better than chance on brands it never saw
    assert {"small", "medium", "large", "all"} <= set(m["localisation"])
    assert card.thresholds["flag"] >= card.thresholds["review"]


def test_index_and_scan_use_the_default_model_when_none_is_named(tmp_path, capsys):
    from markguard.datasets.synth import synth_dataset

    paths = synth_dataset(tmp_path / "d", brands=3, marks_per_brand=2, distractor_brands=1, listings=6, seed=5)
    assert main(["index", "build", str(paths["gallery"]), "-o", str(tmp_path / "idx"), "--device", "cpu"]) == 0
    out = tmp_path / "scan"
    assert main(["scan", str(paths["manifest"]), "-i", str(tmp_path / "idx"), "-o", str(out), "--device", "cpu", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["fingerprint"] == load_card(DEFAULT_MODEL_DIR).fingerprint
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["status"] != "error" for r in rows)
    for r in rows:
        for m in r["matches"]:  # learned regions: every candidate has a box inside its photo
            x0, y0, x1, y1 = m["box"]
            assert 0 <= x0 < x1 and 0 <= y0 < y1
