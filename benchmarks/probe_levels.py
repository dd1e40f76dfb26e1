"""A frozen probe: which pooled features tell pasted marks apart (issue 20, point 4).

Marks of the brands a model's card says were held out of its training (``training.holdout_brands``:
never the real-photo bench's devicon brands), each pasted into photos (``--photos``) at 15-90% of
the short side, letterboxed to the card's scan size and pooled from the feature map by the mark's
true box, exactly as a scan's first look pools a region; the clean references rendered and pooled
as index building does. Retrieval top-1 (cosine) of each pasted mark among all references, per
descriptor:

- ``embedding``: the model's own (GeM over the 1280 channels after ``conv_head``, then the projection);
- ``head1280``: GeM over the 1280 channels, no projection;
- ``block320``: GeM over the last block's 320 channels, before ``conv_head``;
- ``head1280+block320``: the two L2-normalised and concatenated;
- ``embedding+block320``: the model's embedding and the 320 channels, each L2-normalised, concatenated
  (needs no training: a fused descriptor the shipped model could use as it is).

    python benchmarks/probe_levels.py --model data/logotrain-init --gallery data/logo-train \\
        --photos data/backgrounds/train [--imagenet] [--queries 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import roi_align

from markguard.checkpoint import load_checkpoint
from markguard.datasets.decode import load_mark
from markguard.datasets.synth import Backgrounds, paste_mark
from markguard.datasets.transforms import letterbox, render_reference, to_tensor
from markguard.train.loop import fold_brand, read_brand_list

BANDS = ((0.15, 0.35), (0.35, 0.6), (0.6, 0.9))


def levels(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last block's 320-channel map and the 1280-channel map after conv_head (timm EfficientNet)."""
    b = model.backbone
    f = b.bn1(b.conv_stem(x))
    f320 = b.blocks(f)
    return f320, b.bn2(b.conv_head(f320))


def pooled(model, fmap: torch.Tensor, boxes: list[torch.Tensor], size: int) -> torch.Tensor:
    crops = roi_align(fmap.float(), [bx.float() for bx in boxes], output_size=model.roi_size, spatial_scale=fmap.shape[-1] / size,
                      sampling_ratio=2, aligned=True)
    return model.pool(crops)


@torch.no_grad()
def descriptors(model, x: torch.Tensor, boxes: list[torch.Tensor], size: int, trained: bool) -> dict[str, torch.Tensor]:
    f320, f1280 = levels(model, x.contiguous(memory_format=torch.channels_last))
    p320 = F.normalize(pooled(model, f320, boxes, size), dim=-1)
    p1280 = pooled(model, f1280, boxes, size)
    out = {"head1280": F.normalize(p1280, dim=-1), "block320": p320}
    out["head1280+block320"] = torch.cat([out["head1280"], p320], dim=-1)
    if trained:
        out["embedding"] = model.embed_pooled(p1280)
        out["embedding+block320"] = torch.cat([out["embedding"], p320], dim=-1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a checkpoint folder; its card names the held-out brands")
    ap.add_argument("--gallery", required=True)
    ap.add_argument("--photos", required=True)
    ap.add_argument("--imagenet", action="store_true", help="probe the ImageNet Lite0 start (same card, untrained head) instead")
    ap.add_argument("--queries", type=int, default=3, help="pasted photos a mark")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the result as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, card = load_checkpoint(args.model)
    if args.imagenet:
        from markguard.pretrained import load_into, resolve_init

        load_into(model.backbone, resolve_init("efficientnet-lite0"))
    model.eval()
    bench = read_brand_list(Path(__file__).resolve().parents[1] / "train/recipes/heldout_brands.txt")
    held = {fold_brand(b) for b in card.training["holdout_brands"]} - bench  # never the bench's brands
    marks, names, brands = [], [], []
    for folder in sorted(Path(args.gallery).iterdir()):
        if folder.is_dir() and fold_brand(folder.name) in held:
            for f in sorted(folder.iterdir()):
                marks.append(load_mark(f))
                names.append(f"{folder.name}/{f.name}")
                brands.append(folder.name)
    rng = np.random.default_rng(args.seed)
    bgs = Backgrounds(args.photos, pool=0)
    t0 = time.perf_counter()
    size, S = card.input_size, card.scan_size
    refs = [render_reference(m, size) for m in marks]
    x = torch.stack([to_tensor(im, card.mean, card.std) for im, _ in refs])
    ref = descriptors(model, x, [torch.tensor([b], dtype=torch.float32) for _, b in refs], size, not args.imagenet)
    q_desc, q_label, q_scale = [], [], []
    for qi in range(args.queries):
        batch, boxes = [], []
        for i, m in enumerate(marks):
            photo = bgs.sample(400, 300, rng)
            s = float(rng.uniform(0.15, 0.9))
            box = paste_mark(photo, m, rng, scale=s, strength=1.0)
            if box is None:
                continue
            lb = letterbox(photo, S, card.mean, card.std)
            batch.append(lb.tensor)
            boxes.append(torch.tensor([[v * lb.factor for v in box]], dtype=torch.float32))
            q_label.append(i)
            q_scale.append(s)
        for j in range(0, len(batch), 16):
            q_desc.append(descriptors(model, torch.stack(batch[j : j + 16]), boxes[j : j + 16], S, not args.imagenet))
    q = {k: torch.cat([d[k] for d in q_desc]) for k in ref}
    labels, scales = np.array(q_label), np.array(q_scale)
    same_brand = np.array([[brands[a] == brands[b] for b in range(len(marks))] for a in labels])
    result = {"model": args.model, "imagenet": args.imagenet, "marks": len(marks), "brands": len(set(brands)),
              "queries": int(len(labels)), "seconds": round(time.perf_counter() - t0, 1), "top1": {}}
    for k in ref:
        best = (q[k] @ ref[k].T).argmax(dim=1).numpy()
        right = same_brand[np.arange(len(labels)), best]
        row = {"all": round(float(right.mean()), 3)}
        for lo, hi in BANDS:
            sel = (scales >= lo) & (scales < hi)
            row[f"{lo:.2f}-{hi:.2f}"] = round(float(right[sel].mean()), 3)
        result["top1"][k] = row
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
