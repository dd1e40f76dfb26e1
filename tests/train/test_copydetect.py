"""Copy-detection training (train/copydetect.py, `markguard train -r copydetect`) on a few generated photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from markguard.checkpoint import load_checkpoint, model_kind
from markguard.errors import MarkguardError

TINY = ["backbone=resnet10t", "init=null", "freeze_stages=0", "dim=16", "input_size=48", "scan_size=64", "pairs=3",
        "photo_side=96", "view_side=[48,96]", "log_every=1", "checkpoint_every=2", "warmup_steps=1", "ema=0.5",
        "whiten_pairs=32"]


def write_photos(root, n=4, size=(120, 90)):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng(i)
        a = rng.integers(0, 255, (size[1] // 10, size[0] // 10, 3), dtype=np.uint8)
        Image.fromarray(a).resize(size, Image.BILINEAR).save(root / f"p{i}.jpg")
    return root


def run_cli(argv):
    from markguard.cli import main

    return main(argv)


@pytest.mark.slow
def test_trains_through_the_cli_and_ships_a_product_card(tmp_path, capsys):
    photos = write_photos(tmp_path / "photos")
    assert run_cli(["train", "-r", "copydetect", "-o", str(tmp_path / "run"), f"photos={photos}", "steps=2", "group_by_folder=", *TINY]) == 0
    model, card = load_checkpoint(tmp_path / "run")
    assert model_kind(card) == "product" and card.regions["scales"][0] == 1.0
    assert card.training["task"] == "copydetect" and card.training["steps"] == 2 and card.training["n_photos"] == 4
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert "model:" in capsys.readouterr().out


@pytest.mark.slow
def test_stops_and_resumes(tmp_path):
    from markguard.config import load_layered
    from markguard.train.copydetect import CopyDetectConfig, train_copydetect

    photos = write_photos(tmp_path / "photos")
    cfg = load_layered(CopyDetectConfig, "train/recipes/copydetect.yaml", [f"photos={photos}", "steps=3", "group_by_folder=", *TINY])
    card = train_copydetect(cfg, tmp_path / "run", stop_at=1, log=lambda s: None)
    assert card.training["steps"] == 1 and not card.training["finished"]
    card = train_copydetect(cfg, tmp_path / "run", resume=True, log=lambda s: None)
    assert card.training["steps"] == 3 and card.training["finished"]


def test_one_photo_or_no_photos_refused(tmp_path):
    from markguard.config import load_layered
    from markguard.train.copydetect import CopyDetectConfig, train_copydetect

    one = write_photos(tmp_path / "one", n=1)
    cfg = load_layered(CopyDetectConfig, None, [f"photos={one}", *TINY])
    with pytest.raises(MarkguardError, match="needs at least 2 distinct photographs"):
        train_copydetect(cfg, tmp_path / "run", log=lambda s: None)
    with pytest.raises(MarkguardError, match="no photos given; set photos="):
        train_copydetect(load_layered(CopyDetectConfig, None, TINY), tmp_path / "run", log=lambda s: None)
    with pytest.raises(MarkguardError, match="is not a folder"):
        train_copydetect(load_layered(CopyDetectConfig, None, [f"photos={tmp_path / 'nope'}", *TINY]), tmp_path / "run", log=lambda s: None)


def test_learned_whitening_whitens_the_copies_differences():
    from markguard.train.copydetect import learned_whitening

    rng = np.random.default_rng(0)
    photos = rng.normal(size=(400, 8)) * np.array([5, 4, 3, 2, 1, 1, 1, 1.0]) + 3.0
    copies = photos + rng.normal(size=(400, 8)) * np.array([0.1, 2, 0.1, 0.1, 0.5, 0.1, 0.1, 0.1])
    w, b = learned_whitening(photos, copies, dim=8, shrink=0.0)
    d = (photos - copies) @ w.T
    assert np.allclose(d.T @ d / len(d), np.eye(8), atol=1e-3)  # brute force: the copies' differences are white
    x = np.concatenate([photos, copies])
    assert np.allclose((x @ w.T + b).mean(axis=0), 0.0, atol=1e-3)  # centred on the training photos' mean
    w4, _ = learned_whitening(photos, copies, dim=4, shrink=0.0)
    assert w4.shape == (4, 8) and np.allclose(w4, w[:4], atol=1e-4)  # the leading directions are kept


@pytest.mark.slow
def test_whitened_head_and_distillation(tmp_path):
    from markguard.config import load_layered
    from markguard.train.copydetect import CopyDetectConfig, train_copydetect

    photos = write_photos(tmp_path / "photos", n=5)
    rows = []
    cfg = load_layered(CopyDetectConfig, None, [f"photos={photos}", "steps=2", "head_init=whiten", "whiten_pairs=32",
                                                 "distill_weight=1.0", "freeze_bn=true", *TINY])
    card = train_copydetect(cfg, tmp_path / "run", log=rows.append)
    assert json.loads(rows[0])["whitening"]["pairs"] == 32
    assert card.training["head_init"] == "whiten" and card.training["distill_weight"] == 1.0 and card.training["loss"] == "ntxent+koleo+distill"
    steps = [json.loads(r) for r in rows[1:]]
    assert steps[0]["distill"] < 0.05  # step one starts from the teacher itself: only the first update moves it
    with pytest.raises(MarkguardError, match="whiten_pairs=8: whitening 16 dimensions needs at least 32 pairs"):
        load_layered(CopyDetectConfig, None, [*TINY, f"photos={photos}", "head_init=whiten", "whiten_pairs=8"]).validate()
