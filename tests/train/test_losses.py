"""Every registered loss builds from its table entry, runs forward and backward, and takes only the keyword arguments it lists."""

from __future__ import annotations

import pytest
import torch

from markguard.errors import MarkguardError
from markguard.train.config import TrainConfig
from markguard.train.losses import Loss, MetricLoss

CLASSES, DIM = 4, 8


@pytest.mark.parametrize("loss", list(Loss), ids=lambda m: m.name)
def test_every_registered_loss_trains(loss):
    torch.manual_seed(0)
    fn = MetricLoss(loss.name, CLASSES, DIM)
    assert type(fn.loss).__name__ == loss.value.pml_class
    assert (type(fn.miner).__name__ if fn.miner is not None else None) == loss.value.miner
    # a proxy loss owns one vector (or several) per class: they are what the optimiser's loss group trains
    assert bool(list(fn.parameters())) == loss.value.proxy
    emb = torch.nn.functional.normalize(torch.randn(4 * CLASSES, DIM), dim=1).requires_grad_()
    labels = torch.arange(CLASSES).repeat_interleave(4)
    value = fn(emb, labels)
    assert value.ndim == 0 and torch.isfinite(value) and value.item() > 0
    value.backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_loss_kwargs_override_the_table_defaults():
    assert MetricLoss("cosface", CLASSES, DIM).loss.margin == Loss.cosface.value.defaults["margin"]
    fn = MetricLoss("cosface", CLASSES, DIM, margin=0.2, scale=16)
    assert (fn.loss.margin, fn.loss.scale) == (0.2, 16)
    assert MetricLoss("multi_similarity", CLASSES, DIM, beta=10).loss.beta == 10  # once fixed at 50 whatever the recipe said


def test_a_loss_kwarg_the_loss_does_not_take_is_refused():
    with pytest.raises(MarkguardError, match="loss_kwargs margin: loss supcon takes temperature"):
        MetricLoss("supcon", CLASSES, DIM, margin=0.3)
    with pytest.raises(MarkguardError, match="loss_kwargs temprature: loss supcon takes temperature"):
        TrainConfig(gallery="g", loss="supcon", loss_kwargs={"temprature": 0.05}).validate()
    with pytest.raises(MarkguardError, match="unknown loss 'focal'; choose one of cosface"):
        MetricLoss("focal", CLASSES, DIM)
