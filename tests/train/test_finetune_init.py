"""Fine-tuning a markguard checkpoint: init= a model.safetensors starts every tensor (backbone, projection, pooling,
proposal head) from it, checked tensor by tensor, with the preprocessing of its card."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from markguard.errors import MarkguardError
from markguard.train.loop import train
from trainkit import tiny_config


@pytest.fixture
def start(gallery, tmp_path):
    cfg = tiny_config(gallery, steps=2, proposals={"top_k": 4}, pooling="gem")
    train(cfg, tmp_path / "a")
    card = json.loads((tmp_path / "a" / "model_card.json").read_text())
    card["mean"], card["std"] = [0.5] * 3, [0.5] * 3  # as the shipped card has them
    (tmp_path / "a" / "model_card.json").write_text(json.dumps(card))
    return tmp_path / "a" / "model.safetensors"


def test_init_from_a_checkpoint_starts_every_tensor_from_it(gallery, start, tmp_path):
    cfg = tiny_config(gallery, steps=1, proposals={"top_k": 4}, pooling="gem", init=str(start), lr=0.0, loss="supcon", weight_decay=0.0)
    card = train(cfg, tmp_path / "b")
    before, after = load_file(str(start)), load_file(str(tmp_path / "b" / "model.safetensors"))
    heads = [k for k in before if not k.startswith("backbone.")]
    assert {"head.weight", "pool.p"} <= set(heads) and any(k.startswith("proposal_head.") for k in heads)
    for k in heads:  # lr 0: not one head tensor moved from the start (a fresh head would differ everywhere)
        assert torch.equal(before[k], after[k]), k
    for k in before:  # the backbone's weights too (batch-norm statistics move with the batches)
        if k.startswith("backbone.") and "running_" not in k and not k.endswith("num_batches_tracked"):
            assert torch.equal(before[k], after[k]), k
    assert list(card.mean) == [0.5] * 3 and list(card.std) == [0.5] * 3  # the start's preprocessing, not ImageNet's
    assert card.init["source"] == str(start)


def test_init_from_a_checkpoint_of_another_shape_is_one_line(gallery, start, tmp_path):
    cfg = tiny_config(gallery, steps=1, proposals={"top_k": 4}, pooling="gem", init=str(start), dim=24)
    with pytest.raises(MarkguardError, match=r"tensor 'head\.weight' .* does not fit .* set dim/pooling/proposals") as e:
        train(cfg, tmp_path / "b")
    assert "\n" not in str(e.value)
    cfg = tiny_config(gallery, steps=1, proposals={"top_k": 4}, pooling="avg", init=str(start))
    train(cfg, tmp_path / "c")  # avg pooling has no tensors: the rest still fits
    cfg = tiny_config(gallery, steps=1, init=str(start))  # the checkpoint has a proposal head this recipe lacks: fine
    train(cfg, tmp_path / "d")
