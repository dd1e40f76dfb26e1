"""Real photo training sets (SOP, Products-10K, class folders): labelled images as (tensor, box, label) with augmentation."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import Dataset

from markguard.datasets.decode import decode_image
from markguard.datasets.trainsets import TrainSample, open_trainset
from markguard.datasets.transforms import to_tensor
from markguard.errors import DecodeError, MarkguardError


@dataclass
class PhotoSet:
    samples: list[TrainSample]
    labels: list[int]  # class index of each sample
    classes: list[str]  # class index → the set's label
    dropped: int = 0  # classes left out for having fewer than m images


def load_photo_trainset(path: str, fmt: str, *, m: int, drop_small: bool, split: str = "train") -> PhotoSet:
    """The ``split`` samples of a training set (all of them when it has no splits), checked for metric learning."""
    reader = open_trainset(path, fmt)
    samples = list(reader)
    if any(s.split for s in samples):
        samples = [s for s in samples if s.split == split]
    counts = Counter(s.label for s in samples)
    if counts and max(counts.values()) < 2:
        raise MarkguardError(f"{path}: each of its {len(counts)} classes has one image; instance training needs at least two photos "
                             "of each product (the same product in different photos, as SOP and Products-10K have)")
    small = sorted(c for c, n in counts.items() if n < m)
    dropped = 0
    if small and drop_small:
        samples = [s for s in samples if s.label not in set(small)]
        dropped = len(small)
    elif small:
        raise MarkguardError(f"{path}: {len(small)} class(es) have fewer than m_per_class={m} images (e.g. '{small[0]}' has {counts[small[0]]}); "
                             "set drop_small_classes=true, lower m_per_class, or use sampler=random")
    classes = sorted({s.label for s in samples})
    if len(classes) < 2:
        raise MarkguardError(f"{path}: metric learning needs at least 2 classes in split '{split}', found {len(classes)} "
                             f"({len(samples)} images); point trainset= at a set with more classes")
    index = {c: i for i, c in enumerate(classes)}
    return PhotoSet(samples, [index[s.label] for s in samples], classes, dropped)


class PhotoDataset(Dataset):
    """Item ``v`` is sample ``v % n`` augmented with randomness drawn from ``(seed, v)``: the same on every run,
    different every time the order revisits a sample (the order encodes each visit as a distinct ``v``).

    The photo (cut to its box when the set has boxes) is scaled into a ``size`` square at a random
    scale and place; the returned box is where it landed, so the model pools exactly the product.
    """

    def __init__(self, photos: PhotoSet, size: int, mean, std, *, seed: int = 0, augment: bool = True):
        self.photos, self.size, self.mean, self.std, self.seed, self.augment = photos, size, mean, std, seed, augment

    def __len__(self) -> int:
        return len(self.photos.samples)

    def __getitem__(self, v: int):
        n = len(self.photos.samples)
        i = v % n
        s = self.photos.samples[i]
        rng = np.random.default_rng((self.seed, v))
        try:
            img = decode_image(s.path, target_size=2 * self.size).image
        except DecodeError as e:
            raise MarkguardError(f"{s.path}: cannot train on it ({e.reason}); remove it from the training set") from None
        if s.box is not None:
            img = img.crop(s.box)
        S = self.size
        if self.augment:
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            w, h = img.size  # random crop keeping 70-100% of each side
            cw, ch = max(1, int(w * rng.uniform(0.7, 1.0))), max(1, int(h * rng.uniform(0.7, 1.0)))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img = img.crop((x, y, x + cw, y + ch))
            img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.7, 1.3)))
            img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.7, 1.3)))
            side = S * float(rng.uniform(0.6, 1.0))
        else:
            side = float(S)
        f = side / max(img.size)
        w, h = max(1, round(img.width * f)), max(1, round(img.height * f))
        x = int(rng.integers(0, S - w + 1)) if self.augment else 0
        y = int(rng.integers(0, S - h + 1)) if self.augment else 0
        x_full = torch.zeros(3, S, S)  # zeros = the mean colour after normalising, as the scan's letterbox pads
        x_full[:, y : y + h, x : x + w] = to_tensor(img.resize((w, h), Image.BILINEAR), self.mean, self.std)
        return x_full, torch.tensor([x, y, x + w, y + h], dtype=torch.float32), self.photos.labels[i]
