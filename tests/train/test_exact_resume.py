"""Exact resume: N steps straight equal N/2 steps, stop, and N/2 more after --resume, bit for bit on CPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from trainkit import tiny_config
from safetensors.torch import load_file

from markguard.errors import MarkguardError
from markguard.train.loop import LAST, train


def _tensors(run):
    out = {}
    for name in ("model.safetensors", f"{LAST}/model.safetensors", f"{LAST}/loss.safetensors"):
        out |= {f"{name}:{k}": v for k, v in load_file(run / name).items()}
    return out


@pytest.mark.parametrize("loss,ema", [("cosface", 0.9), ("multi_similarity", 0.0)])
def test_resume_is_bit_identical(gallery, tmp_path, loss, ema):
    cfg = tiny_config(gallery, steps=4, loss=loss, ema=ema)
    train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "split", stop_at=2)
    half = load_file(tmp_path / "split" / LAST / "model.safetensors")
    train(cfg, tmp_path / "split", resume=True)
    a, b = _tensors(tmp_path / "straight"), _tensors(tmp_path / "split")
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"resumed run differs in {differ[:5]}"
    # the stop really happened mid-way: weights then were not the final ones
    assert any(not torch.equal(v, a[f"{LAST}/model.safetensors:{k}"]) for k, v in half.items() if v.is_floating_point())
    rows = (tmp_path / "split" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]


def test_compiled_backbone_trains_the_same_weights(gallery, tmp_path):
    # the "eager" backend runs torch.compile's graph capture without a C++ toolchain; inductor is for GPUs
    cfg = tiny_config(gallery, steps=2)
    train(cfg, tmp_path / "eager")
    train(dataclasses.replace(cfg, compile="eager"), tmp_path / "compiled")
    a, b = load_file(tmp_path / "eager" / "model.safetensors"), load_file(tmp_path / "compiled" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_resume_refuses_another_recipe(gallery, tmp_path):
    cfg = tiny_config(gallery, steps=4)
    train(cfg, tmp_path / "run", stop_at=2)
    other = dataclasses.replace(cfg, lr=0.5)
    with pytest.raises(MarkguardError, match=r"different recipe \(lr: 0.001 -> 0.5\)"):
        train(other, tmp_path / "run", resume=True)
    # steps may change on resume (a longer schedule)
    train(dataclasses.replace(cfg, steps=5), tmp_path / "run", resume=True)


def test_fresh_run_refuses_existing_run_and_resume_needs_one(gallery, tmp_path):
    cfg = tiny_config(gallery, steps=2)
    with pytest.raises(MarkguardError, match="no checkpoint to resume from"):
        train(cfg, tmp_path / "empty", resume=True)
    train(cfg, tmp_path / "run")
    with pytest.raises(MarkguardError, match="--resume"):
        train(cfg, tmp_path / "run")


def test_cli_stop_and_resume(gallery, tmp_path, capsys):
    from markguard.cli import main

    args = ["train", "--out", str(tmp_path / "run"), f"gallery={gallery}", "backbone=resnet10t", "dim=16", "input_size=32",
            "scan_size=64", "batch_size=8", "m_per_class=2", "steps=3", "warmup_steps=1", "workers=0", "calibrate=false", "device=cpu"]
    assert main([*args, "--stop-at", "1"]) == 0
    said = capsys.readouterr().out
    assert f"continue with: markguard train --out {tmp_path / 'run'} --resume" in said
    assert main([*args, "lr=0.1", "--resume"]) == 2
    assert "was trained with lr=0.001" in capsys.readouterr().err  # a resume keeps the run's recipe
    assert main([*args, "--resume"]) == 0
    assert (tmp_path / "run" / "metrics.json").exists()
    assert main([*args[:3], "colour=red"]) == 2
    assert "unknown key 'colour'; allowed keys:" in capsys.readouterr().err


def test_resume_refuses_changed_data(tmp_path):
    from markguard.datasets.synth import make_marks, write_gallery

    g = write_gallery(make_marks(5, 1, seed=4), tmp_path / "g")
    cfg = tiny_config(g, steps=3)
    train(cfg, tmp_path / "run", stop_at=1)
    write_gallery(make_marks(6, 1, seed=4), g)  # a brand added under the same path
    with pytest.raises(MarkguardError, match=r"training data changed since the checkpoint \(brands: 5 -> 6, classes: 6 -> 7, marks: 5 -> 6,"):
        train(cfg, tmp_path / "run", resume=True)
