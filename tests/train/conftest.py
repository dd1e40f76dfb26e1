"""Fixtures for the training tests: tiny galleries, a tiny SOP layout and a tiny trained model (tests/conftest.py sets one torch thread)."""

from __future__ import annotations

import pytest

from markguard.datasets.synth import make_marks, write_gallery
from trainkit import tiny_config, write_sop


@pytest.fixture(scope="session")
def gallery(tmp_path_factory):
    """Six brands with one mark each."""
    return write_gallery(make_marks(6, 1, seed=3), tmp_path_factory.mktemp("gallery"))


@pytest.fixture(scope="session")
def gallery8(tmp_path_factory):
    """Eight brands, two marks each (for held-out evaluation)."""
    return write_gallery(make_marks(8, 2, seed=5), tmp_path_factory.mktemp("gallery8"))


@pytest.fixture(scope="session")
def tiny_model(gallery8, tmp_path_factory):
    """A run folder: resnet10t trained 12 steps on 5 of gallery8's brands, 3 held out."""
    from markguard.train.loop import train

    out = tmp_path_factory.mktemp("tiny_model")
    train(tiny_config(gallery8, steps=12, holdout_brands=3, dim=32, calibrate=True, calib_listings=16), out)
    return out


@pytest.fixture(scope="session")
def sop(tmp_path_factory):
    return write_sop(tmp_path_factory.mktemp("sop") / "Stanford_Online_Products", {f"{100 + i}": 3 for i in range(5)})
