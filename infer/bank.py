"""Similarity normalised against a bank of background regions: no reference may be a hub.

An embedding trained on one distribution has "hubs": references that sit close to almost any
region, so they become the best match of photos that do not show them, and a global threshold
either flags those photos or misses real copies of other marks. The copy-detection systems that
do best normalise each similarity by how close the reference already is to photos without it
(the background bank). markguard keeps, for each reference, the mean of its ``k`` highest
similarities to a bank of mark-free regions (its *bias*), and scores a match as how far the
region sits above that background level on the way to an identical picture:

    normalised = (similarity - bias) / (1 - bias)

The bank is made at index time from procedural listing backgrounds with generic shapes and
plain text on them (what no brand owns), plus any mark-free photos the operator gives, pooled
over the same grid of regions a scan uses.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image

from markguard.checkpoint import ModelCard
from markguard.datasets.decode import decode_image
from markguard.datasets.synth import find_fonts, paste_mark, procedural_background, random_word, render_logo, render_wordmark
from markguard.datasets.transforms import letterbox
from markguard.infer.embed import embed_regions
from markguard.infer.regions import grid_boxes
from markguard.preprocess import resolve_preprocessing

BANK_K = 10  # the bias is the mean of a reference's k best similarities to the bank


def bank_images(n: int, size: int, *, seed: int = 0, photos: list[Path] | None = None) -> list[Image.Image]:
    """``n`` mark-free listing-like pictures: procedural backgrounds carrying generic shapes or plain text, then the photos given."""
    rng = np.random.default_rng((seed, 7919))
    fonts = find_fonts()
    out = []
    for _ in range(n):
        img = procedural_background(size, size, rng)
        for _ in range(int(rng.integers(0, 3))):
            thing = render_logo(rng, size=96) if rng.random() < 0.5 or not fonts else render_wordmark(random_word(rng), rng, fonts, size=48)
            paste_mark(img, thing, rng, scale=float(rng.uniform(0.15, 0.5)))
        out.append(img)
    if photos:
        out += [decode_image(p, target_size=size).image.convert("RGB") for p in photos]
    return out


@torch.no_grad()
def background_bank(model, card: ModelCard, images: list[Image.Image], *, device: str = "cpu", batch_size: int = 16) -> np.ndarray:
    """(N, dim) embeddings of every grid region of ``images``, letterboxed and pooled as a scan pools them."""
    prep = resolve_preprocessing(card)  # the grid's defaults live in markguard/preprocess.py only
    out = []
    for i in range(0, len(images), batch_size):
        lbs = [letterbox(im, prep.scan_size, prep.mean, prep.std) for im in images[i : i + batch_size]]
        x = torch.stack([lb.tensor for lb in lbs])
        boxes = [grid_boxes(*lb.valid, scales=prep.regions.scales, overlap=prep.regions.overlap) for lb in lbs]
        out.append(embed_regions(model, card, x, boxes, device=device).vectors.cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, card.dim), np.float32)


def reference_bias(refs: np.ndarray, bank: np.ndarray, k: int = BANK_K) -> np.ndarray:
    """Each reference's mean similarity to its ``k`` closest bank regions (brute force: the bank is small)."""
    if len(bank) == 0 or len(refs) == 0:
        return np.zeros(len(refs), np.float32)
    k = min(k, len(bank))
    sims = refs.astype(np.float32) @ bank.astype(np.float32).T
    top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
    return top.mean(axis=1).astype(np.float32)


def normalise(similarity, bias):
    """How far above its background level a similarity sits, on the way to 1 (an identical picture); kept on the
    similarity's scale [-1, 1] (far below the background, (s - bias)/(1 - bias) would pass -1), so a threshold of
    -1 still means "every match"."""
    bias = np.minimum(np.asarray(bias, dtype=np.float32), 0.999)
    return np.clip((np.asarray(similarity, dtype=np.float32) - bias) / (1.0 - bias), -1.0, 1.0)


@dataclass
class Hub:
    """Best matches of photos that do not show them: how much one reference soaks up."""

    photos: int  # photos whose best match is a reference they do not show (negatives, and positives matched to another brand)
    reference: str | None  # "brand/mark" that is most often such a best match
    count: int  # how many of those photos it is the best match of
    share: float | None  # count / photos
    distinct: int  # references that are the best match of at least one such photo
    top: list[tuple[str, int]] = field(default_factory=list)


def hub_of(wrong: Iterable[str], top: int = 5) -> Hub:
    """The hub figure of ``wrong``: for each photo whose best match is a reference it does not show, that reference."""
    counts = Counter(wrong)
    n = sum(counts.values())
    if not n:
        return Hub(0, None, 0, None, 0)
    (ref, count), = counts.most_common(1)
    return Hub(n, ref, count, count / n, len(counts), counts.most_common(top))
