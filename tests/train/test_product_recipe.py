"""`markguard train -r product` on a small generated instance set (SOP layout), end to end through the CLI."""

from __future__ import annotations

import pytest
from trainkit import write_sop

from markguard.checkpoint import load_checkpoint, model_kind
from markguard.errors import MarkguardError

TINY = ["backbone=resnet10t", "init=null", "freeze_stages=0", "dim=16", "input_size=32", "scan_size=64", "batch_size=8",
        "steps=3", "warmup_steps=1", "workers=0", "log_every=1", "checkpoint_every=100", "ema=0.0", "device=cpu"]


@pytest.mark.slow
def test_product_recipe_trains_end_to_end_and_indexes_whole_photos(tmp_path, capsys):
    from markguard.cli import main
    from markguard.infer.build import build_index, read_index_meta

    sop = write_sop(tmp_path / "sop", {"1": 3, "2": 3, "3": 2, "4": 2})
    assert main(["train", "-r", "product", "-o", str(tmp_path / "run"), f"trainset={sop}", *TINY]) == 0
    assert "model:" in capsys.readouterr().out
    model, card = load_checkpoint(tmp_path / "run")
    assert model_kind(card) == "product" and card.training["classes"] == 4
    # its index holds whole photos, as the copy-detection model's does
    (tmp_path / "cat" / "acme").mkdir(parents=True)
    (sop / "chair_final" / "1_0.JPG").rename(tmp_path / "cat" / "acme" / "chair.jpg")
    build_index(tmp_path / "cat", tmp_path / "idx", model=tmp_path / "run", kind="flat", device="cpu")
    assert read_index_meta(tmp_path / "idx")["model_kind"] == "product"


def test_one_image_per_class_says_instance_training_needs_two(tmp_path):
    from markguard.config import load_layered
    from markguard.train.config import TrainConfig, resolve_recipe
    from markguard.train.loop import train

    sop = write_sop(tmp_path / "sop", {"1": 1, "2": 1, "3": 1})
    cfg = load_layered(TrainConfig, resolve_recipe("product"), [f"trainset={sop}", *TINY])
    with pytest.raises(MarkguardError, match=r"each of its 3 classes has one image; instance training needs at least two photos of each product"):
        train(cfg, tmp_path / "run", log=lambda s: None)
