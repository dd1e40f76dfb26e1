"""The second look: the best few proposals of each photo cropped from the photo at its own resolution and embedded again.

The first look sees the whole photo letterboxed to the scan size (320 px): a mark at a tenth of the
photo's short side covers one or two cells of the feature map there, too few to embed. The proposal
head still finds it; so the proposals the head scores best get a second look — a square window
around each (with a margin), cut from the decoded photo before it was shrunk (``Batch.hires``),
resized to the model's training input size and run through the backbone in one batch for all the
photos of the batch. The region pooled from that look joins the photo's first-look regions in the
search, with its box in photo pixels.

The number of looks is bounded per photo and per batch, so a batch costs a known amount: with
``per_batch`` looks for a batch of ``n`` photos the backbone sees ``per_batch x input_size^2``
pixels more than the first look's ``n x scan_size^2``. The head's score decides who gets one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from markguard.errors import MarkguardError
from markguard.infer.embed import RegionEmbeddings, feature_maps
from markguard.infer.regions.learned import NO_HEAD, learned_proposals
from markguard.preprocess import LookSettings


@dataclass
class Looks:
    """One batch's second looks for one model: vectors and boxes per photo."""

    vectors: torch.Tensor  # (sum n_i, dim)
    counts: list[int]  # n_i looks of photo i
    photo_boxes: list[np.ndarray]  # (n_i, 4) in photo pixels, clipped to the photo
    scores: list[torch.Tensor]  # (n_i,) the proposal score that earned each look


def choose_looks(scores: list[torch.Tensor], settings: LookSettings) -> list[torch.Tensor]:
    """Which proposals get a second look: per photo the best ``per_photo`` scoring at least ``min_score``,
    and over the batch the best ``per_batch`` of those. Returns each photo's chosen proposal positions."""
    cand = [(float(s), i, j) for i, sc in enumerate(scores) for j, s in enumerate(sc[: settings.per_photo].tolist())
            if s >= settings.min_score]
    cand.sort(key=lambda c: -c[0])
    chosen: list[list[int]] = [[] for _ in scores]
    for _, i, j in cand[: settings.per_batch]:
        chosen[i].append(j)
    return [torch.tensor(sorted(c), dtype=torch.long) for c in chosen]


def look_windows(boxes: np.ndarray, margin: float, min_side: float) -> np.ndarray:
    """Square windows (x0, y0, x1, y1) centred on ``boxes`` (photo pixels), ``margin`` times their long side
    and at least ``min_side``; they may reach past the photo (the part outside is padding)."""
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    side = np.maximum(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * margin, min_side)
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1).astype(np.float32)


def crop_windows(image: torch.Tensor, windows: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """(n, 3, size, size) normalised crops of ``image`` (uint8 CHW, on any device) at ``windows`` (its pixels).

    Each window is cut at integer pixels, normalised, padded where it leaves the image with zeros (the
    mean colour, as the letterbox pads) and resized with antialiasing, so a large window is averaged,
    not sampled."""
    _, h, w = image.shape
    m = torch.tensor(mean, dtype=torch.float32, device=image.device).view(3, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32, device=image.device).view(3, 1, 1)
    out = torch.zeros(len(windows), 3, size, size, device=image.device)
    for n, (x0, y0, x1, y1) in enumerate(windows.tolist()):
        side = max(1, int(math.ceil(max(x1 - x0, y1 - y0))))
        ix0, iy0 = int(math.floor(x0)), int(math.floor(y0))
        canvas = torch.zeros(3, side, side, device=image.device)
        sx0, sy0, sx1, sy1 = max(ix0, 0), max(iy0, 0), min(ix0 + side, w), min(iy0 + side, h)
        if sx1 > sx0 and sy1 > sy0:
            piece = image[:, sy0:sy1, sx0:sx1].float() / 255
            canvas[:, sy0 - iy0 : sy1 - iy0, sx0 - ix0 : sx1 - ix0] = (piece - m) / sd
        out[n] = F.interpolate(canvas[None], size=(size, size), mode="bilinear", antialias=side > size, align_corners=False)[0]
    return out


def second_look(model, prep, batch, inp, fmap: torch.Tensor, settings: LookSettings, *, device: str = "cpu",
                precision: str = "auto") -> Looks:
    """The look stage for one model: its proposals on the first look's ``fmap``, the chosen ones cropped from
    ``batch.hires`` and embedded; a photo without a look gets none (its first-look regions stand)."""
    if getattr(model, "proposal_head", None) is None:
        raise MarkguardError(f"second looks need the model's proposal head ({NO_HEAD}); or scan with --looks 0")
    if batch.hires is None:
        raise MarkguardError("second looks need the photos at their own resolution: decode the batch with hires")
    size = prep.input_size
    props = learned_proposals(model, fmap, inp.valid, inp.x.shape[-1])
    chosen = choose_looks([p.scores for p in props], settings)
    crops, boxes_in_crop, photo_boxes, scores, windows = [], [], [], [], []
    for i, (p, pick) in enumerate(zip(props, chosen)):
        boxes = inp.to_photo([p.boxes[pick].float()])[0] if len(pick) else np.zeros((0, 4), np.float32)
        # the decoded copy's pixels per photo pixel; windows are chosen in photo pixels, cut in the copy's
        (fx, fy) = batch.hires_to_orig[i]
        win = look_windows(boxes, settings.margin, min_side=size * 0.5 * max(fx, fy))
        if len(win):
            crops.append(crop_windows(batch.hires[i], win / np.array([fx, fy, fx, fy], np.float32), size, prep.mean, prep.std))
        side = (win[:, 2] - win[:, 0])[:, None] if len(win) else np.zeros((0, 1), np.float32)
        inside = (boxes - np.concatenate([win[:, :2], win[:, :2]], axis=1)) * (size / np.maximum(side, 1e-6))
        boxes_in_crop.extend(torch.from_numpy(np.clip(b, 0, size)).float()[None] for b in inside)
        photo_boxes.append(boxes)
        windows.append(win)
        scores.append(p.scores[pick])
    counts = [len(b) for b in photo_boxes]
    if not crops:
        return Looks(torch.zeros(0, model.dim), counts, photo_boxes, scores)
    x = torch.cat(crops)
    look_fmap = feature_maps(model, x, device=device, precision=precision)
    if settings.refine:
        boxes_in_crop = refine_boxes(model, look_fmap, boxes_in_crop, size)
        photo_boxes = _to_photo(boxes_in_crop, photo_boxes, windows, size, inp.orig_size)
    with torch.no_grad():
        vectors = model.embed_regions(look_fmap, [b.to(look_fmap.device) for b in boxes_in_crop], size)
    return Looks(vectors, counts, photo_boxes, scores)


def refine_boxes(model, fmap: torch.Tensor, boxes: list[torch.Tensor], size: int, min_iou: float = 0.1) -> list[torch.Tensor]:
    """Each look's box (crop pixels) replaced by the head's best box on the look itself where that one overlaps it
    (IoU >= ``min_iou``): the close look sees the mark's edges, which the first look saw as one or two cells."""
    from torchvision.ops import box_iou

    props = learned_proposals(model, fmap, [(size, size)] * len(boxes), size)
    out = []
    for b, p in zip(boxes, props):
        if len(p.boxes) and float(box_iou(p.boxes[:1].float(), b.float())[0, 0]) >= min_iou:
            out.append(p.boxes[:1].float())
        else:
            out.append(b)
    return out


def _to_photo(boxes_in_crop: list[torch.Tensor], photo_boxes: list[np.ndarray], windows: list[np.ndarray], size: int,
              orig_size: list[tuple[int, int]]) -> list[np.ndarray]:
    """Crop-pixel boxes (one a look, flat over the batch) back to each photo's pixels, clipped to the photo."""
    out, k = [], 0
    for pb, win, (w, h) in zip(photo_boxes, windows, orig_size):
        n = len(pb)
        if not n:
            out.append(pb)
            continue
        b = torch.cat(boxes_in_crop[k : k + n]).numpy().astype(np.float32)
        side = (win[:, 2] - win[:, 0])[:, None]
        p = b * (side / size) + np.concatenate([win[:, :2], win[:, :2]], axis=1)
        out.append(np.clip(p, 0, [w, h, w, h]).astype(np.float32))
        k += n
    return out


def with_looks(emb: RegionEmbeddings, photo_boxes: list[np.ndarray], looks: Looks) -> tuple[RegionEmbeddings, list[np.ndarray]]:
    """The first look's regions and the second looks', photo by photo, as one search input."""
    parts, boxes, start, lstart = [], [], 0, 0
    vec, lvec = emb.vectors, looks.vectors.to(emb.vectors.device, emb.vectors.dtype)
    for n, ln, b, lb in zip(emb.counts, looks.counts, photo_boxes, looks.photo_boxes):
        parts += [vec[start : start + n], lvec[lstart : lstart + ln]]
        boxes.append(np.concatenate([b, lb]) if ln else b)
        start, lstart = start + n, lstart + ln
    counts = [n + ln for n, ln in zip(emb.counts, looks.counts)]
    return RegionEmbeddings(torch.cat(parts) if parts else vec, counts), boxes
