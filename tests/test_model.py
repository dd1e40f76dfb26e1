"""The embedding model: behaviour without a proposal head is unchanged; the head's targets, loss and checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from markguard.checkpoint import ModelCard, create_model, load_checkpoint, save_checkpoint
from markguard.errors import MarkguardError
from markguard.model import EmbeddingModel, distances_to_boxes, proposal_targets

S = 64


@pytest.fixture(scope="module")
def plain():
    torch.manual_seed(0)
    return EmbeddingModel("resnet10t", 16, output_stride=16).eval()


@pytest.fixture(scope="module")
def headed():
    torch.manual_seed(0)
    return EmbeddingModel("resnet10t", 16, output_stride=16, proposals={"top_k": 5, "hidden": 16}).eval()


def test_model_without_proposals_has_no_head(plain):
    assert plain.proposal_head is None and not any(k.startswith("proposal_head") for k in plain.state_dict())
    x = torch.randn(2, 3, S, S)
    with torch.no_grad():
        fmap = plain.forward_features(x)
        assert plain(x).shape == (2, 16)
    with pytest.raises(MarkguardError, match="no proposal head; use --regions grid or train with proposals"):
        plain.propose(fmap)
    with pytest.raises(MarkguardError, match="no proposal head"):
        plain.proposal_loss(fmap, torch.tensor([[0.0, 0.0, 10, 10]] * 2), torch.ones(2, dtype=torch.bool), S)


def test_head_leaves_embeddings_alone(plain, headed):
    """Adding a head must not change what the embedding computes (same seed, same backbone weights)."""
    x = torch.randn(2, 3, S, S)
    with torch.no_grad():
        assert torch.allclose(plain(x), headed(x), atol=1e-6)
        logits, dist = headed.propose(headed.forward_features(x))
    assert logits.shape == (2, 4, 4) and dist.shape == (2, 4, 4, 4) and (dist > 0).all()


def test_unknown_proposal_setting_is_named():
    with pytest.raises(MarkguardError, match=r"unknown proposal setting\(s\) \['topk'\]"):
        EmbeddingModel("resnet10t", 16, proposals={"topk": 5})


def test_targets_centre_ness_inside_box_zero_outside_and_for_background():
    # a 4x4 map of stride 16: cell centres at 8, 24, 40, 56
    boxes = torch.tensor([[0.0, 0.0, 48.0, 48.0], [30.0, 30.0, 36.0, 36.0], [0.0, 0.0, 64.0, 64.0]])
    t = proposal_targets(boxes, torch.tensor([True, True, False]), 4, 4, 16.0)
    # image 0: cells (0..2, 0..2) are inside; the middle one (centre 24,24) is the box centre → 1
    assert (t[0, :3, :3] > 0).all() and (t[0, 3] == 0).all() and (t[0, :, 3] == 0).all()
    assert t[0, 1, 1] == 1.0 and t[0, 0, 0] < t[0, 1, 1]
    # image 1: a 6-px mark holds no cell centre; the cell holding its centre (33, 33) is still positive
    assert t[1].sum() == 1.0 and t[1, 2, 2] == 1.0
    assert t[2].sum() == 0.0  # background


def test_distances_to_boxes_decodes_cell_offsets():
    dist = torch.zeros(1, 4, 2, 2)
    dist[0, :, 1, 0] = torch.tensor([0.5, 1.0, 1.5, 2.0])  # cell (row 1, col 0): centre (8, 24) at stride 16
    boxes = distances_to_boxes(dist, 16.0)
    assert boxes.shape == (1, 2, 2, 4)
    assert boxes[0, 1, 0].tolist() == [0.0, 8.0, 32.0, 56.0]


def test_loss_backgrounds_only_and_gradients_reach_head():
    m = EmbeddingModel("resnet10t", 16, output_stride=16, proposals={"hidden": 16})
    x = torch.randn(2, 3, S, S)
    fmap = m.forward_features(x)
    bg = m.proposal_loss(fmap, torch.zeros(2, 4), torch.zeros(2, dtype=torch.bool), S)
    assert torch.isfinite(bg) and bg > 0
    pos = m.proposal_loss(fmap, torch.tensor([[8.0, 8, 40, 40], [20, 4, 60, 30]]), torch.ones(2, dtype=torch.bool), S)
    pos.backward()
    assert m.proposal_head.box.weight.grad.abs().sum() > 0  # the box branch learns from positives
    assert pos > bg  # an untrained head predicts "no mark" everywhere: positives cost more


def test_checkpoint_round_trip_keeps_the_head(tmp_path):
    card = ModelCard(backbone="resnet10t", dim=16, output_stride=16, input_size=S, scan_size=96, proposals={"top_k": 5, "hidden": 16})
    model = create_model(card)
    with torch.no_grad():
        model.proposal_head.score.bias.fill_(0.3)  # something a fresh head would not have
    save_checkpoint(model, card, tmp_path)
    loaded, card2 = load_checkpoint(tmp_path)
    assert card2.proposals == {"top_k": 5, "hidden": 16}
    x = torch.randn(1, 3, S, S)
    with torch.no_grad():
        a = model.eval().propose(model.forward_features(x))
        b = loaded.propose(loaded.forward_features(x))
    assert torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
