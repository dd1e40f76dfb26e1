"""Training from given weights and on listing-like data: init, frozen stages, excluded brands, photo backgrounds."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from markguard.checkpoint import load_checkpoint
from markguard.errors import MarkguardError
from markguard.train.loop import fold_brand, freeze_stages, train
from trainkit import tiny_config


@pytest.fixture
def init_file(tmp_path):
    model = timm.create_model("resnet10t", num_classes=0, global_pool="")
    torch.manual_seed(0)
    state = {k: (torch.randn_like(v) * 0.05 if v.is_floating_point() and v.ndim > 1 else v) for k, v in model.state_dict().items()}
    path = tmp_path / "init.safetensors"
    save_file(state, str(path))
    return path, state


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(folder / f"p{i}.jpg")
    return folder


def test_init_frozen_stages_and_listing_data(gallery, init_file, photos, tmp_path):
    path, state = init_file
    excluded = tmp_path / "heldout.txt"
    first = sorted(p.name for p in gallery.iterdir() if p.is_dir())[0]
    excluded.write_text(f"# evaluation brands\n{first.upper()}\n")
    cfg = tiny_config(gallery, init=str(path), freeze_stages=1, exclude_brands=str(excluded), backgrounds=str(photos), p_photo=0.5,
                      p_recolour=0.5, p_negative=0.5, p_background=0.3, steps=3)
    card = train(cfg, tmp_path / "run")
    assert card.init["source"] == str(path) and len(card.init["sha256"]) == 64
    assert card.training["marks"] == 5  # six brands, one excluded by the list (case and punctuation folded)
    model, _ = load_checkpoint(tmp_path / "run")
    after = model.backbone.state_dict()
    # the stem and first stage are the init's, unchanged (weights and batch-norm statistics); later stages trained
    for k in ("conv1.0.weight", "bn1.running_mean", "layer1.0.conv1.weight"):
        assert torch.equal(after[k], state[k]), k
    assert not torch.equal(after["layer3.0.conv1.weight"], state["layer3.0.conv1.weight"])


def test_init_for_another_backbone_is_one_line(gallery, init_file, tmp_path):
    path, _ = init_file
    cfg = tiny_config(gallery, init=str(path), backbone="resnet14t")
    with pytest.raises(MarkguardError, match=r"no tensor 'layer1\.0\.conv3\.weight' .* made for another backbone") as e:
        train(cfg, tmp_path / "run")
    assert "\n" not in str(e.value)


def test_missing_backgrounds_folder_fails(gallery, tmp_path):
    with pytest.raises(MarkguardError, match="backgrounds folder not found"):
        train(tiny_config(gallery, backgrounds=str(tmp_path / "nope")), tmp_path / "run")


def test_fold_brand_and_freeze_bounds():
    assert fold_brand("Vue.js") == fold_brand("vuedotjs") == "vuejs"
    model = timm.create_model("resnet10t", num_classes=0)
    with pytest.raises(MarkguardError, match="has 4 stages"):
        freeze_stages(model, 5)
    assert freeze_stages(model, 0) == []


def test_background_samples_take_their_share_of_every_batch():
    """The m-per-class sampler draws classes uniformly: with thousands of mark classes it would almost never
    draw the one background class, and p_background (and p_negative, which lives on background samples)
    would do nothing. Each batch must end with p_background of background samples, in whole groups of m."""
    from markguard.config import load_layered
    from markguard.train.config import TrainConfig
    from markguard.train.loop import batch_order

    marks, bg_label = 2000, 2000
    labels = [i % marks for i in range(20_000)]
    for i in range(0, 20_000, 9):
        labels[i] = bg_label
    cfg = load_layered(TrainConfig, None, ["batch_size=32", "m_per_class=2", "p_background=0.12", "sampler=m_per_class"])
    order = batch_order(labels, cfg, 32 * 50, background=bg_label)
    assert order == batch_order(labels, cfg, 32 * 50, background=bg_label)  # fixed by the seed
    for b in range(50):
        batch = [labels[i] for i in order[32 * b : 32 * (b + 1)]]
        assert batch[-4:] == [bg_label] * 4  # 0.12 x 32 = 3.84 samples: two groups of 2
        marks_in = batch[:-4]
        assert all(marks_in[j] == marks_in[j + 1] for j in range(0, len(marks_in), 2))  # mark classes still in pairs
    uniform = batch_order(labels, cfg, 32 * 50)  # without the background label: the sampler's own order
    assert sum(labels[i] == bg_label for i in uniform) < 0.01 * len(uniform)
