"""Shared fixtures: a tiny trained model, gallery and dump, made once per test session."""

from __future__ import annotations

import os

import pytest
import torch

# Tests run two at a time (pytest -n 2) on 2 cores: one torch thread each keeps them from thrashing.
torch.set_num_threads(int(os.environ.get("MARKGUARD_TEST_THREADS", "1")))

# What markguard caches (the backbone's ONNX graph per model, references' keypoints) goes to a folder of this test
# process's own, never the user's ~/.cache: a test sees the first-use export and detection as a new user would.
if "MARKGUARD_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["MARKGUARD_CACHE"] = tempfile.mkdtemp(prefix="markguard-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MARKGUARD_CACHE"], True)

TINY = ["backbone=resnet10t", "input_size=48", "scan_size=96", "dim=32", "batch_size=8", "m_per_class=2",
        "workers=0", "calib_listings=10", "log_every=1", "checkpoint_every=2", "warmup_steps=1"]


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """Training overrides that make a run take seconds: a small backbone at tiny resolution."""
    return list(TINY)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A synthetic gallery and dump, a model trained for a few steps on it, and an index."""
    from markguard.config import load_layered
    from markguard.datasets.synth import synth_dataset
    from markguard.infer.build import build_index
    from markguard.train.config import TrainConfig
    from markguard.train.loop import train

    root = tmp_path_factory.mktemp("tiny_world")
    paths = synth_dataset(root / "data", brands=3, marks_per_brand=2, distractor_brands=2, listings=12, seed=3)
    cfg = load_layered(TrainConfig, None, TINY + [f"gallery={paths['gallery']}", "steps=4"])
    card = train(cfg, root / "model", log=lambda s: None)
    build_index(paths["gallery"], root / "index", model=root / "model", kind="flat", device="cpu")
    return {**paths, "model": root / "model", "index": root / "index", "card": card, "root": root}
