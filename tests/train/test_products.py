"""The product path: real labelled photos (a tiny Stanford Online Products layout) through the same trainer."""

from __future__ import annotations

import pytest
import torch
from trainkit import tiny_config, write_sop

from markguard.checkpoint import load_checkpoint
from markguard.errors import MarkguardError
from markguard.train.loop import train
from markguard.train.products import PhotoDataset, load_photo_trainset


def product_config(root, **kw):
    return tiny_config(None, trainset=str(root), background_class=False, loss="multi_similarity", **kw)


def test_photo_dataset_items(sop):
    photos = load_photo_trainset(str(sop), "auto", m=2, drop_small=False)
    assert len(photos.classes) == 5 and len(photos.samples) == 15
    ds = PhotoDataset(photos, 32, (0.5,) * 3, (0.25,) * 3, seed=1)
    x, box, y = ds[7]
    assert x.shape == (3, 32, 32) and y == photos.labels[7]
    x0, y0, x1, y1 = box.tolist()
    assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
    assert x[:, int(y0) : int(y1), int(x0) : int(x1)].abs().sum() > 0
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[int(y0) : int(y1), int(x0) : int(x1)] = False
    assert x[:, outside].abs().max() == 0  # padding is the mean colour, as the scan letterboxes
    assert torch.equal(ds[7][0], x)  # deterministic per index
    assert not torch.equal(ds[7 + 15][0], x)  # the next visit of the same photo is augmented differently
    assert ds[7 + 15][2] == y


def test_trains_on_sop_and_resumes_exactly(sop, tmp_path):
    from safetensors.torch import load_file

    cfg = product_config(sop, steps=4, ema=0.5)
    card = train(cfg, tmp_path / "a")
    assert card.training["trainset"] == str(sop) and card.training["classes"] == 5 and card.training["images"] == 15
    model, loaded = load_checkpoint(tmp_path / "a")
    assert loaded.fingerprint == card.fingerprint
    train(cfg, tmp_path / "b", stop_at=2)
    train(cfg, tmp_path / "b", resume=True)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_small_classes_refused_or_dropped(tmp_path):
    root = write_sop(tmp_path / "sop", {"1": 3, "2": 3, "3": 1, "4": 3, "5": 3})
    with pytest.raises(MarkguardError, match=r"1 class\(es\) have fewer than m_per_class=2 images \(e.g. '3' has 1\); set drop_small_classes=true"):
        train(product_config(root, steps=1), tmp_path / "run")
    card = train(product_config(root, steps=1, drop_small_classes=True), tmp_path / "run2")
    assert card.training["classes"] == 4 and card.training["dropped_small_classes"] == 1


def test_single_class_and_empty_sets_refused(tmp_path):
    one = write_sop(tmp_path / "one", {"1": 4})
    with pytest.raises(MarkguardError, match="at least 2 classes"):
        train(product_config(one, steps=1), tmp_path / "r1")
    empty = write_sop(tmp_path / "empty", {})
    with pytest.raises(MarkguardError, match="at least 2 classes in split 'train', found 0"):
        train(product_config(empty, steps=1), tmp_path / "r2")


def test_image_folder_trainset(tmp_path):
    from PIL import Image

    for c in ("red", "green", "blue"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (20, 24), c).save(tmp_path / "f" / c / f"{k}.png")
    card = train(product_config(tmp_path / "f", steps=2, batch_size=6, trainset_format="imagefolder"), tmp_path / "run")
    assert card.training["classes"] == 3
