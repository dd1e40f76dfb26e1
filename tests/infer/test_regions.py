"""Region selection: decoding the proposal head by hand, the learned and combined modes, a head that learns.

benchmarks/bench_regions.py --quick runs in tests/benchmarks/test_bench_quick.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from markguard.checkpoint import ModelCard
from markguard.datasets.synth import make_marks, paste_mark, procedural_background
from markguard.datasets.transforms import to_tensor
from markguard.errors import MarkguardError
from markguard.infer.regions import RegionMode, decode_proposals, grid_boxes, learned_proposals, select_regions
from markguard.model import EmbeddingModel

CARD = ModelCard(backbone="resnet10t", dim=16, input_size=64, scan_size=64)


def _head_output(h=4, w=4):
    """A head that is sure of nothing: all logits very negative, distances of one stride."""
    return torch.full((1, h, w), -10.0), torch.ones(1, 4, h, w)


def test_decode_maps_cell_and_distances_to_pixels():
    logits, dist = _head_output()
    logits[0, 1, 2] = 3.0  # cell (row 1, col 2): centre (40, 24) at stride 16
    dist[0, :, 1, 2] = torch.tensor([1.0, 0.5, 0.25, 1.5])
    (p,) = decode_proposals(logits, dist, 16.0, [(64, 64)], score_thresh=0.5)
    assert p.boxes.tolist() == [[24.0, 16.0, 44.0, 48.0]]
    assert p.scores.tolist() == pytest.approx([torch.sigmoid(torch.tensor(3.0)).item()])


def test_decode_clips_to_content_and_ignores_padding_cells():
    logits, dist = _head_output()
    logits[0, 0, 0] = 2.0  # reaches past the top-left corner
    dist[0, :, 0, 0] = torch.tensor([2.0, 2.0, 1.0, 1.0])
    logits[0, 0, 3] = 5.0  # centre x = 56: on the padding of a 40-px-wide photo
    (p,) = decode_proposals(logits, dist, 16.0, [(40, 64)], score_thresh=0.5)
    assert p.boxes.tolist() == [[0.0, 0.0, 24.0, 24.0]]


def test_decode_nms_and_top_k():
    logits, dist = _head_output()
    logits[0, 1, 1], logits[0, 1, 2] = 4.0, 3.0  # two neighbours predicting the same box
    dist[0, :, 1, 1] = torch.tensor([1.0, 1.0, 2.0, 1.0])  # (8, 8, 56, 40)
    dist[0, :, 1, 2] = torch.tensor([2.0, 1.0, 1.0, 1.0])  # the same box from the next cell
    logits[0, 3, 0] = 2.0  # a separate small box at the bottom left
    (p,) = decode_proposals(logits, dist, 16.0, [(64, 64)], score_thresh=0.5, nms_iou=0.5)
    assert p.boxes.tolist() == [[8.0, 8.0, 56.0, 40.0], [0.0, 40.0, 24.0, 64.0]]  # the second clipped to the photo
    assert (p.scores[:-1] >= p.scores[1:]).all()
    (p1,) = decode_proposals(logits, dist, 16.0, [(64, 64)], score_thresh=0.5, top_k=1)
    assert p1.boxes.tolist() == [[8.0, 8.0, 56.0, 40.0]]


def test_learned_mode_needs_a_head():
    model = EmbeddingModel("resnet10t", 16, output_stride=16)
    with pytest.raises(MarkguardError, match="model has no proposal head; use --regions grid or train with proposals"):
        select_regions(RegionMode.learned, model, CARD, torch.zeros(1, model.num_features, 4, 4), [(64, 64)], 64)


def test_learned_and_combined_modes_start_with_the_whole_image():
    torch.manual_seed(0)
    model = EmbeddingModel("resnet10t", 16, output_stride=16, proposals={"top_k": 3, "score_thresh": 0.0, "hidden": 16}).eval()
    fmap = model.forward_features(torch.randn(2, 3, 64, 64))
    valid = [(64, 48), (40, 64)]
    learned = select_regions(RegionMode.learned, model, CARD, fmap, valid, 64)
    combined = select_regions(RegionMode("learned+grid"), model, CARD, fmap, valid, 64)
    for b, c, (w, h) in zip(learned, combined, valid):
        assert b[0].tolist() == [0.0, 0.0, w, h] and 1 < len(b) <= 4
        assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all() and (b[:, :2] >= 0).all()
        grid = grid_boxes(w, h, [0.5])[1:]
        assert torch.equal(c[: len(b)], b) and torch.equal(c[len(b):], grid)
    assert [len(b) for b in select_regions(RegionMode.none, model, CARD, fmap, valid, 64)] == [1, 1]


def _composites(marks, n, seed, size):
    rng = np.random.default_rng(seed)
    xs, boxes = [], []
    while len(xs) < n:
        bg = procedural_background(size, size, rng)
        box = paste_mark(bg, marks[int(rng.integers(len(marks)))].image, rng, scale=float(rng.uniform(0.3, 0.6)), strength=0.5)
        if box is not None:
            xs.append(to_tensor(bg, CARD.mean, CARD.std))
            boxes.append(box)
    return torch.stack(xs).contiguous(memory_format=torch.channels_last), torch.tensor(boxes, dtype=torch.float32)


@pytest.mark.slow
def test_head_learns_where_marks_are():
    """A few dozen steps on synthetic composites: the top proposal on unseen photos must overlap the truth
    far better than a box of the right size placed in the middle (what an uninformed guess gets)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny maps: one thread is faster than two fighting over 2 busy cores
    try:
        S = 64
        marks = make_marks(4, 1, seed=3)
        x_train, b_train = _composites(marks, 48, 0, S)
        x_test, b_test = _composites(marks, 16, 1, S)
        model = EmbeddingModel("resnet10t", 16, output_stride=16, proposals={"top_k": 5, "score_thresh": 0.0}).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(30):
            idx = torch.randperm(len(x_train), generator=g)[:8]
            loss = model.proposal_loss(model.forward_features(x_train[idx]), b_train[idx], torch.ones(8, dtype=torch.bool), S)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            props = learned_proposals(model, model.forward_features(x_test), [(S, S)] * len(x_test), S)
    finally:
        torch.set_num_threads(threads)
    top = torch.stack([p.boxes[0] for p in props])
    iou = box_iou(top, b_test).diagonal()
    wh = (b_test[:, 2:] - b_test[:, :2]).mean(0)
    centre = torch.cat([(S - wh) / 2, (S + wh) / 2]).expand(len(b_test), 4)
    guess = box_iou(centre, b_test).diagonal()
    assert iou.mean() > 0.4 and iou.mean() > guess.mean() + 0.15, (iou.mean(), guess.mean())


def test_unknown_mode_names_the_choices():
    with pytest.raises(MarkguardError, match="none, grid, tiles, learned, learned\\+grid"):
        select_regions("learnt", None, CARD, None, [(64, 64)], 64)


@pytest.mark.parametrize("mode", list(RegionMode))
def test_every_registered_mode_gives_the_whole_photo_first_and_boxes_inside(mode):
    model = EmbeddingModel("resnet10t", 16, output_stride=16, proposals={"top_k": 5, "score_thresh": 0.0})
    fmap = model.forward_features(torch.randn(2, 3, 64, 64)) if mode.value.needs_fmap else None
    valid = [(64, 48), (40, 64)]
    assert RegionMode(mode.label) is mode and RegionMode.named(mode.label) is mode
    boxes = select_regions(mode, model, CARD, fmap, valid, 64)
    assert len(boxes) == 2
    for b, (w, h) in zip(boxes, valid):
        assert b[0].tolist() == [0.0, 0.0, float(w), float(h)]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
    expect = {"none": 1, "grid": None, "tiles": None, "learned": None, "learned+grid": None}[mode.label]
    assert expect is None or all(len(b) == expect for b in boxes)


def test_region_defaults_come_from_one_place():
    from markguard.preprocess import REGION_DEFAULTS, resolve_preprocessing

    assert ModelCard().regions == REGION_DEFAULTS and ModelCard().regions is not REGION_DEFAULTS
    bare = ModelCard(regions={"mode": "learned"})  # a card that names only its mode
    prep = resolve_preprocessing(bare)
    assert (prep.regions.mode, list(prep.regions.scales), prep.regions.overlap) == (
        "learned", REGION_DEFAULTS["scales"], REGION_DEFAULTS["overlap"])
    grid = select_regions(RegionMode.grid, None, bare, None, [(64, 64)], 64)[0]
    assert grid.tolist() == grid_boxes(64, 64, REGION_DEFAULTS["scales"], REGION_DEFAULTS["overlap"]).tolist()
    with pytest.raises(MarkguardError, match="field resize is 'stretch'"):
        resolve_preprocessing(ModelCard(resize="stretch"))
