"""The first look over a scale pyramid: every region embedded at the level where it is about the size the model learned.

References are embedded at the model's input size (112 px); the first look letterboxes a photo to
the scan size (320 px). A mark filling a photo then reaches the backbone about three times larger
than anything the model learned, and is missed. The pyramid runs the first look at several sizes
of the same decoded batch (the card's ``regions.pyramid``, e.g. 320 and 128 px: the smaller made by
downsampling the tensor already decoded, never a second decode), finds regions at each (proposals
and grid) and keeps at each level the regions whose long side there is nearest the input size:
a level keeps a region when no other level would show it closer to ``input_size`` (within
``SLACK``), the finest keeps every smaller one and the coarsest every larger one (the whole photo
included, so a photo that is all mark still matches at the size it was learned at).

Scores from different levels are made comparable by each level's ``gain`` (the card's, measured by
``benchmarks/bench_pyramid.py`` on mark-free photos: a level's similarities times its gain sit
where the scan-size level's do), so that adding a level does not lift the scores of photos without
a mark and with them the threshold that small marks must clear.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from markguard.infer.decode import ModelInput
from markguard.infer.embed import RegionEmbeddings, feature_maps, region_vectors
from markguard.infer.regions import RegionMode, find_regions
from markguard.preprocess import PyramidLevel

# a level also keeps regions up to this factor past its share of sizes (in log scale, both ways): near the boundary
# between two levels neither is clearly better, and a region seen at both is cheap to pool twice
SLACK = 1.5


@dataclass
class FirstLook:
    """One batch's first look for one model over all its pyramid levels."""

    emb: RegionEmbeddings  # every kept region of every level, photo by photo
    photo_boxes: list[np.ndarray]  # the same regions in the photos' pixels
    fmap: torch.Tensor | None  # the largest level's feature map: where second looks choose their proposals (None: crops)
    inp: ModelInput  # the largest level's input
    levels: list[int]  # the level (position in the pyramid) of each region, flat in the order of ``emb.vectors``


def level_input(inp: ModelInput, size: int) -> ModelInput:
    """``inp`` (at the scan size) downsampled to ``size`` px, with its geometry back to the photos."""
    if size == inp.x.shape[-1]:
        return inp
    f = size / inp.x.shape[-1]
    x = F.interpolate(inp.x, size=(size, size), mode="bilinear", align_corners=False, antialias=True) if len(inp.x) else inp.x[:, :, :size, :size]
    valid = [(max(1, min(size, round(w * f))), max(1, min(size, round(h * f)))) for w, h in inp.valid]
    return replace(inp, x=x, valid=valid, factor=inp.factor * f)


def size_ranges(sizes: list[int], input_size: int, slack: float = SLACK) -> list[tuple[float, float]]:
    """Per level, the range of a region's long side in the photo's letterbox (a share of the level's side) it keeps.

    Level sizes S_a > S_b split at the share r where r*S_a/input_size = input_size/(r*S_b): r = input_size/sqrt(S_a*S_b)."""
    cuts = [input_size / math.sqrt(a * b) for a, b in zip(sizes, sizes[1:])]
    lo = [0.0] + [c / slack for c in cuts]  # the largest level keeps every small region, the smallest every large one
    hi = [c * slack for c in cuts] + [math.inf]
    return list(zip(lo, hi))


def keep_sizes(boxes: torch.Tensor, side: int, lo: float, hi: float) -> torch.Tensor:
    """Which ``boxes`` (level pixels) have a long side in [lo, hi) of the level's ``side``; the whole photo (the first box) always
    at the coarsest level (hi = inf)."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.bool)
    long = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / side
    return (long >= lo) & (long < hi)


def first_look(model, card, prep, mode: RegionMode, inp: ModelInput, *, device: str = "cpu", precision: str = "auto",
               tick: Callable[[str, float], float] | None = None) -> FirstLook:
    """Regions → embed over every level of ``prep.pyramid`` (largest first), one backbone pass a level.

    ``tick(stage, t0)`` times a stage and returns the time now (the pipeline's StageTimes.add)."""
    tick = tick or (lambda stage, t0: time.perf_counter())
    levels: tuple[PyramidLevel, ...] = prep.pyramid or (PyramidLevel(inp.x.shape[-1]),)
    ranges = size_ranges([lv.size for lv in levels], prep.input_size) if len(levels) > 1 else [(0.0, math.inf)]
    n = len(inp.valid)
    per_photo_vec: list[list[torch.Tensor]] = [[] for _ in range(n)]
    per_photo_box: list[list[np.ndarray]] = [[] for _ in range(n)]
    per_photo_lvl: list[list[int]] = [[] for _ in range(n)]
    top_fmap, top_inp = None, inp
    t = time.perf_counter()
    for j, (lv, (lo, hi)) in enumerate(zip(levels, ranges)):
        li = level_input(inp, lv.size)
        t = tick("decode", t)  # resizing the decoded batch, as model_input's rescale is timed
        fmap = None
        if mode.value.embed == "pool":
            fmap = feature_maps(model, li.x, device=device, precision=precision)
            t = tick("embed", t)
        regions = find_regions(mode, model, prep.regions, li, fmap)
        keep = [keep_sizes(b, lv.size, lo, hi) for b in regions.boxes]
        boxes = [b[k] for b, k in zip(regions.boxes, keep)]
        photo_boxes = [pb[k.numpy()] for pb, k in zip(regions.photo_boxes, keep)]
        t = tick("regions", t)
        emb = region_vectors(mode.value, model, prep.input_size, li.x, boxes, fmap, device=device, precision=precision)
        vec = emb.vectors.float() * lv.gain  # float: levels join in one tensor whatever the precision
        t = tick("embed", t)
        start = 0
        for i, c in enumerate(emb.counts):
            per_photo_vec[i].append(vec[start : start + c])
            per_photo_box[i].append(photo_boxes[i])
            per_photo_lvl[i] += [j] * c
            start += c
        if j == 0:
            top_fmap, top_inp = fmap, li
    counts = [sum(len(v) for v in vs) for vs in per_photo_vec]
    parts = [v for vs in per_photo_vec for v in vs]
    vectors = torch.cat(parts) if parts else torch.zeros(0, model.dim)
    boxes = [np.concatenate(bs).astype(np.float32) if bs else np.zeros((0, 4), np.float32) for bs in per_photo_box]
    return FirstLook(RegionEmbeddings(vectors, counts), boxes, top_fmap, top_inp, [lv for ls in per_photo_lvl for lv in ls])


def level_best(first: FirstLook, scores: np.ndarray, ids: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per photo and level, the best of ``scores`` (one per region of ``first``, flat) and its ``ids``; -inf / -1 where a level
    kept no region of a photo."""
    n = len(first.emb.counts)
    best = np.full((n, levels), -np.inf, np.float32)
    rid = np.full((n, levels), -1, np.int64)
    lv = np.asarray(first.levels, dtype=np.int64)
    start = 0
    for i, c in enumerate(first.emb.counts):
        for j in range(levels):
            sel = np.flatnonzero(lv[start : start + c] == j) + start
            if len(sel):
                k = sel[int(np.argmax(scores[sel]))]
                best[i, j], rid[i, j] = scores[k], ids[k]
        start += c
    return best, rid


def level_gains(best: np.ndarray, quantile: float = 0.99) -> list[float]:
    """Gains that put each level's ``quantile`` of mark-free photos' best scores (``best``: photos x levels, from
    :func:`level_best`, levels as the pyramid orders them) where the first level's (the scan size's) is."""
    q = [float(np.quantile(col[np.isfinite(col)], quantile)) for col in best.T]
    return [round(q[0] / v, 4) for v in q]
