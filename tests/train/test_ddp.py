"""DDP: two CPU processes under torchrun (gloo) train a few steps; rank 0 writes a loadable checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from trainkit import tiny_config

from markguard.checkpoint import load_checkpoint
from markguard.errors import MarkguardError
from markguard.train.ddp import Dist, shard_batches
from markguard.train.loop import LAST, STATE, train


def test_shard_batches_splits_whole_batches():
    order = list(range(24))  # 6 batches of 4
    r0 = shard_batches(order, 4, Dist(0, 2))
    r1 = shard_batches(order, 4, Dist(1, 2))
    assert r0 == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19]
    assert r1 == [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]
    assert shard_batches(order, 4, Dist(0, 1)) is order


@pytest.mark.slow
def test_two_cpu_processes(gallery, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(gallery, steps=3)
    overrides = [f"{k}={v}" for k, v in dict(gallery=gallery, backbone=cfg.backbone, dim=cfg.dim, input_size=cfg.input_size,
                                               scan_size=cfg.scan_size, batch_size=cfg.batch_size, m_per_class=cfg.m_per_class,
                                               steps=3, warmup_steps=1, workers=0, log_every=1, calibrate="false", device="cpu").items()]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "markguard.cli", "train", "--out", str(out), *overrides],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, card = load_checkpoint(out)
    assert card.training["batch_size"] == 2 * cfg.batch_size  # the global batch spans both ranks
    state = torch.load(out / LAST / STATE, weights_only=True)
    assert (state["step"], state["world_size"]) == (3, 2)
    assert len((out / "metrics.csv").read_text().splitlines()) == 4  # header + one row a step, written once
    assert proc.stderr.count("train: step 3/3") == 1  # only rank 0 logs
    # a resume must use the same number of processes: the order is split per process
    with pytest.raises(MarkguardError, match="written by 2 process"):
        train(tiny_config(gallery, steps=4), out, resume=True)
