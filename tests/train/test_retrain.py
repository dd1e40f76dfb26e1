"""Retraining as the README writes it: `markguard train -r logo -o RUN gallery=GALLERY` on a gallery of a few brands,
and `markguard train -o RUN --resume` with the run's saved settings."""

from __future__ import annotations

import json

import pytest

from markguard.cli import main
from markguard.commands.train import fit_to_gallery, saved_config
from markguard.config import load_layered, save_config
from markguard.errors import MarkguardError
from markguard.train.config import TrainConfig, resolve_recipe


def _logo(gallery, *overrides):
    return load_layered(TrainConfig, resolve_recipe("logo"), [f"gallery={gallery}", *overrides])


def test_a_few_brands_get_no_holdout_and_a_batch_they_fill(gallery):
    logged = []
    cfg = fit_to_gallery(_logo(gallery), set(), logged.append)  # six brands, one mark each
    assert cfg.holdout_brands == 0 and cfg.batch_size == 6 * cfg.m_per_class
    text = "\n".join(logged)
    assert "holdout_brands 50 -> 0" in text and f"batch_size 64 -> {6 * cfg.m_per_class}" in text  # the log says what was chosen
    # a value given on the command line is the user's
    cfg = fit_to_gallery(_logo(gallery, "batch_size=8"), {"batch_size"}, logged.append)
    assert cfg.batch_size == 8


def test_a_large_gallery_keeps_the_recipe(tmp_path):
    from PIL import Image

    g = tmp_path / "g"
    for b in range(40):
        (g / f"b{b:02d}").mkdir(parents=True)
        for m in range(2):
            Image.new("RGB", (8, 8), (b, m, 0)).save(g / f"b{b:02d}" / f"m{m}.png")
    cfg = fit_to_gallery(_logo(g, "holdout_brands=2", "batch_size=32"), set(), lambda s: None)
    assert cfg.holdout_brands == 2 and cfg.batch_size == 32  # 40 brands hold 2 out; 76 marks fill 32


def test_excluded_brands_are_named_and_all_excluded_is_one_line(tmp_path, gallery):
    (tmp_path / "ex.txt").write_text("\n".join(p.name for p in gallery.iterdir() if p.is_dir()) + "\n")
    with pytest.raises(MarkguardError, match="exclude_brands=null") as e:
        fit_to_gallery(_logo(gallery, f"exclude_brands={tmp_path / 'ex.txt'}"), set(), lambda s: None)
    assert "\n" not in str(e.value)


def test_resume_takes_the_saved_settings_and_checks_overrides(tmp_path, gallery):
    cfg = _logo(gallery, "steps=100")
    save_config(cfg, tmp_path / "config.yaml", {"versions": {}, "device": "cpu", "world_size": 1})
    assert saved_config(tmp_path) == cfg
    assert saved_config(tmp_path, ["steps=200"]).steps == 200  # a resume may run longer
    with pytest.raises(MarkguardError, match=r"lr=0.0006 \(asked 0.1\).*start a new --out"):
        saved_config(tmp_path, ["lr=0.1"])


def test_train_out_naming_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["train", "-r", "logo", "-o", str(tmp_path / "f"), f"gallery={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file" in err


def test_resume_without_a_run_is_one_line(tmp_path, capsys):
    assert main(["train", "-o", str(tmp_path / "none"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "without --resume" in err


def test_stop_then_resume_with_only_the_run_folder(tmp_path, gallery, tiny_overrides, capsys):
    run = tmp_path / "run"
    assert main(["train", "-o", str(run), "--stop-at", "2", f"gallery={gallery}", *tiny_overrides, "steps=4", "calib_listings=4"]) == 0
    assert "continue with: markguard train --out" in capsys.readouterr().out
    assert main(["train", "-o", str(run), "--resume"]) == 0  # no recipe, no gallery=: the run's config.yaml
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4
    assert main(["train", "-o", str(run), "--resume", "dim=64"]) == 2
    assert "dim=32" in capsys.readouterr().err


@pytest.mark.slow
def test_the_readme_retraining_command_works_first_time_on_a_few_brands(tmp_path, gallery, capsys, monkeypatch):
    """The README's line on a six-brand gallery, shortened (steps, calibration) only to keep the test fast."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-r", "logo", "-o", "runs/my-logos", f"gallery={gallery}", "steps=1", "calibrate=false",
                 "input_size=64", "scan_size=96"]) == 0
    err = capsys.readouterr().err
    assert "holdout_brands 50 -> 0" in err and "batch_size 64 -> 12" in err
    assert (tmp_path / "runs/my-logos/model.safetensors").is_file()
