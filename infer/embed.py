"""Embed: the gallery's reference marks, and listing photos with their regions, in batched forward passes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from markguard.checkpoint import ModelCard
from markguard.datasets.transforms import render_reference, to_tensor
from markguard.device import autocast
from markguard.model import EmbeddingModel
from markguard.preprocess import resolve_preprocessing


@torch.no_grad()
def embed_references(model: EmbeddingModel, card: ModelCard, marks: list[Image.Image], *, batch_size: int = 32,
                     device: str = "cpu", precision: str = "auto") -> np.ndarray:
    """(n, dim) float32 embeddings of reference marks, rendered the way training renders a clean mark."""
    prep = resolve_preprocessing(card)
    out = []
    for i in range(0, len(marks), batch_size):
        imgs, boxes = zip(*(render_reference(m, prep.input_size) for m in marks[i : i + batch_size]))
        x = torch.stack([to_tensor(im, prep.mean, prep.std) for im in imgs]).to(device)
        with autocast(device, precision):
            fmap = model.forward_features(x.contiguous(memory_format=torch.channels_last))
        emb = model.embed_regions(fmap, [torch.tensor([b], dtype=torch.float32, device=device) for b in boxes], prep.input_size)
        out.append(emb.cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, card.dim), np.float32)


@dataclass
class RegionEmbeddings:
    vectors: torch.Tensor  # (sum R_i, dim)
    counts: list[int]  # R_i per image


@torch.no_grad()
def feature_maps(model: EmbeddingModel, x: torch.Tensor, *, device: str = "cpu", precision: str = "auto") -> torch.Tensor:
    """The one backbone pass a batch of photos gets (channels-last: several times faster on CPU with oneDNN)."""
    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with autocast(device, precision):
        return model.forward_features(x)


@torch.no_grad()
def embed_regions(model: EmbeddingModel, card: ModelCard, x: torch.Tensor, boxes: list[torch.Tensor], *,
                  device: str = "cpu", precision: str = "auto", fmap: torch.Tensor | None = None) -> RegionEmbeddings:
    """Every image's regions pooled from its feature map (computed here unless ``fmap`` is given)."""
    if fmap is None:
        fmap = feature_maps(model, x, device=device, precision=precision)
    vec = model.embed_regions(fmap, [b.to(fmap.device) for b in boxes], x.shape[-1])
    return RegionEmbeddings(vec, [len(b) for b in boxes])


CROP_BATCH = 64  # crops a backbone call, for the tiles baseline


@torch.no_grad()
def embed_crops(model: EmbeddingModel, input_size: int, x: torch.Tensor, boxes: list[torch.Tensor], *, device: str = "cpu",
                precision: str = "auto") -> RegionEmbeddings:
    """The slow baseline: crop every region, resize it to the training input (``input_size``) and run the backbone on each."""
    from torchvision.ops import roi_align

    size = input_size
    crops = roi_align(x, [b.to(x.device, x.dtype) for b in boxes], output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    out = []
    for i in range(0, len(crops), CROP_BATCH):
        part = crops[i : i + CROP_BATCH]
        whole = [torch.tensor([[0.0, 0.0, size, size]])] * len(part)
        out.append(embed_regions(model, None, part, whole, device=device, precision=precision).vectors)
    return RegionEmbeddings(torch.cat(out) if out else torch.zeros(0, model.dim), [len(b) for b in boxes])


def region_vectors(method, model: EmbeddingModel, input_size: int, x: torch.Tensor, boxes: list[torch.Tensor], fmap, *,
                   device: str = "cpu", precision: str = "auto") -> RegionEmbeddings:
    """The embed stage after regions: pooled from the feature map, or cropped (at ``input_size``), as the region method says."""
    if method.embed == "crops":
        return embed_crops(model, input_size, x, boxes, device=device, precision=precision)
    return embed_regions(model, None, x, boxes, fmap=fmap, device=device, precision=precision)
