"""Helpers for the training tests (a module of its own: conftest.py names clash across test folders)."""

from __future__ import annotations

from markguard.train.config import TrainConfig


def tiny_config(gallery, **overrides) -> TrainConfig:
    """A config that trains in about a second a step on this machine; ``gallery`` None for a trainset run."""
    base = dict(gallery=None if gallery is None else str(gallery), backbone="resnet10t", dim=16, input_size=32, scan_size=64, batch_size=8,
                m_per_class=2, steps=4, warmup_steps=1, workers=0, log_every=1, checkpoint_every=100,
                calibrate=False, calib_listings=12, device="cpu", loss="cosface", ema=0.0)
    base.update(overrides)
    cfg = TrainConfig(**base)
    cfg.validate()
    return cfg


def write_sop(root, classes: dict[str, int], *, size=(40, 30), seed: int = 0):
    """A Stanford Online Products layout: ``classes`` maps class_id → image count (all in the train list)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = ["image_id class_id super_class_id path"]
    n = 0
    for class_id, count in classes.items():
        folder = root / "chair_final"
        folder.mkdir(exist_ok=True)
        colour = rng.integers(0, 255, 3)
        for k in range(count):
            n += 1
            arr = np.clip(colour + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype("uint8")
            Image.fromarray(arr).save(folder / f"{class_id}_{k}.JPG", quality=90)
            lines.append(f"{n} {class_id} 1 chair_final/{class_id}_{k}.JPG")
    (root / "Ebay_train.txt").write_text("\n".join(lines) + "\n")
    (root / "Ebay_test.txt").write_text("image_id class_id super_class_id path\n")
    return root
