"""Per-scale scores of the first look's pyramid (infer/pyramid.py): are a coarse level's similarities comparable to the scan size's?

For each level of a pyramid, each photo's best similarity over the regions that level keeps, against a
gallery, on two sets of photos:

- mark-free photos: random listing-sized crops of real photographs (``--photos``, e.g. data/real-photos;
  never the reserved packages), against a gallery the bench does not use (``--gallery``, default
  data/si-only, ``--brands`` of its brands drawn at random). A level whose scores sit higher there lifts the
  threshold every mark must clear; the gain that puts its ``--quantile`` (the FPR a threshold is set at)
  where the scan-size level's is, is printed as the card's ``regions.pyramid`` entry.
- optionally a real-photo bench (``--bench``, its own gallery): per size band of the mark, the share of photos
  whose best match at that level alone is the right brand, and the median best score.

    python benchmarks/bench_pyramid.py --photos data/real-photos --pyramid 320 128 [--bench data/realbench2 --every 4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from markguard.checkpoint import load_checkpoint, resolve_model_dir
from markguard.datasets.decode import decode_image
from markguard.datasets.transforms import letterbox
from markguard.infer.build import build_index
from markguard.infer.decode import ModelInput
from markguard.infer.index.markindex import MarkIndex
from markguard.infer.pyramid import first_look, level_best, level_gains
from markguard.infer.regions import RegionMode
from markguard.preprocess import resolve_preprocessing


def crops_of(photo_dirs: list[Path], n: int, seed: int) -> list:
    """``n`` listing-sized random crops of the photos (the bench's crop rule, another seed: not the bench's own crops)."""
    from markguard.datasets.realbench import PHOTO_SUFFIXES, _crop_photo

    paths = sorted(p for d in photo_dirs for p in Path(d).rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
    if not paths:
        sys.exit(f"no photos under {', '.join(map(str, photo_dirs))}")
    photos = [decode_image(p, target_size=2048).image.convert("RGB") for p in paths]
    rng = np.random.default_rng((seed, 31337))
    return [_crop_photo(photos[int(rng.integers(len(photos)))], rng, (640, 1024)) for _ in range(n)]


def sample_gallery(src: Path, brands: int, out: Path, seed: int) -> Path:
    """A gallery of ``brands`` brand folders of ``src`` drawn at random, copied into ``out`` (an index build refuses
    marks that link out of their gallery)."""
    folders = sorted(p for p in src.iterdir() if p.is_dir())
    random.Random(seed).shuffle(folders)
    out.mkdir(parents=True, exist_ok=True)
    for f in folders[:brands]:
        shutil.copytree(f, out / f.name)
    return out


def per_level_best(model, card, prep, index: MarkIndex, images: list, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(photos, levels) best score and the best match's record id of each photo over each level's regions (-inf / -1: none)."""
    mode = RegionMode.named(prep.regions.mode)
    best, rid = [], []
    for s in range(0, len(images), batch):
        part = images[s : s + batch]
        lbs = [letterbox(im, prep.scan_size, prep.mean, prep.std) for im in part]
        inp = ModelInput(torch.stack([lb.tensor for lb in lbs]), [lb.valid for lb in lbs], 1.0,
                         [(1 / lb.factor, 1 / lb.factor) for lb in lbs], [im.size for im in part])
        first = first_look(model, card, prep, mode, inp)
        scores, ids = index.search(np.ascontiguousarray(first.emb.vectors.float().numpy()), 1)
        b, r = level_best(first, scores[:, 0], ids[:, 0], len(prep.pyramid))
        best.append(b)
        rid.append(r)
    return np.concatenate(best), np.concatenate(rid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", nargs="+", help="folders of mark-free real photographs (never the reserved packages)")
    ap.add_argument("--pyramid", nargs="+", type=int, default=[320, 128], help="level sizes, largest first (gains are measured, not read)")
    ap.add_argument("--model", help="checkpoint folder (default: the shipped model)")
    ap.add_argument("--gallery", default="data/si-only", help="gallery for the mark-free photos (default data/si-only)")
    ap.add_argument("--brands", type=int, default=300)
    ap.add_argument("--crops", type=int, default=300, help="mark-free crops")
    ap.add_argument("--quantile", type=float, default=0.99, help="where the gains align the levels (0.99: a threshold at FPR 1%%)")
    ap.add_argument("--bench", help="also per level and size band on this real-photo bench (its gallery)")
    ap.add_argument("--every", type=int, default=4, help="with --bench: every N-th listing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="folder for bench_pyramid.json (default: print only)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: a generated gallery and its synthetic listings as "
                    "the photos, 12 crops (checks the script runs; the figures mean nothing)")
    args = ap.parse_args()
    if args.quick:
        from markguard.datasets.synth import synth_dataset

        paths = synth_dataset(Path(tempfile.mkdtemp(prefix="markguard-pyramid-quick-")), brands=6, listings=8, seed=0)
        args.gallery, args.photos, args.brands, args.crops, args.bench = str(paths["gallery"]), [str(paths["listings"])], 6, 12, None
    elif not args.photos:
        ap.error("--photos is required (or --quick)")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model_dir = resolve_model_dir(args.model)
    model, card = load_checkpoint(model_dir)
    model.eval()
    card.regions = {**card.regions, "pyramid": list(args.pyramid)}
    prep = resolve_preprocessing(card, source="--pyramid")
    tmp = Path(tempfile.mkdtemp(prefix="markguard-pyramid-"))
    # the index's fingerprint is the shipped card's: the pyramid changes only how photos are looked at, not references
    gallery = sample_gallery(Path(args.gallery), args.brands, tmp / "gallery", args.seed)
    build_index(gallery, tmp / "index", model=model_dir, kind="flat", device="cpu")
    index = MarkIndex.load(tmp / "index")
    best, _ = per_level_best(model, card, prep, index, crops_of([Path(p) for p in args.photos], args.crops, args.seed))
    np.save(tmp / "mark_free_best.npy", best)
    q = [float(np.quantile(best[:, j][np.isfinite(best[:, j])], args.quantile)) for j in range(len(args.pyramid))]
    med = [float(np.median(best[:, j][np.isfinite(best[:, j])])) for j in range(len(args.pyramid))]
    gains = level_gains(best, args.quantile)
    both = np.max(best, axis=1)
    scaled = np.max(best * np.asarray(gains, np.float32), axis=1)
    result = {"model": str(model_dir), "fingerprint": card.fingerprint, "pyramid": args.pyramid, "crops": args.crops,
              "gallery": f"{args.brands} brands of {args.gallery}", "quantile": args.quantile,
              "mark_free": {"median": med, "quantile": q, "gains": gains,
                            "best_of_levels_quantile": float(np.quantile(both, args.quantile)),
                            "best_of_levels_with_gains_quantile": float(np.quantile(scaled, args.quantile)),
                            "scan_size_level_quantile": q[0]}}
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"model {card.fingerprint}; {args.crops} mark-free crops of {', '.join(args.photos)} against {result['gallery']}")
    print("| level (px) | median best score | q%g best score | gain to the scan size's q |" % (args.quantile * 100))
    print("|---|---|---|---|")
    for size, m, v, g in zip(args.pyramid, med, q, gains):
        print(f"| {size} | {m:.4f} | {v:.4f} | {g:.4f} |")
    print(f"# best of all levels: q{args.quantile * 100:g} {result['mark_free']['best_of_levels_quantile']:.4f} "
          f"(with the gains {result['mark_free']['best_of_levels_with_gains_quantile']:.4f}; the scan size's alone {q[0]:.4f})")
    print("# card: \"pyramid\": " + json.dumps([{"size": s, "gain": g} for s, g in zip(args.pyramid, gains)]))
    if args.bench:
        result["bench"] = bench_levels(Path(args.bench), model, card, prep, model_dir, tmp, args.every, args.pyramid, gains)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench_pyramid.json").write_text(json.dumps(result, indent=2))


def bench_levels(bench: Path, model, card, prep, model_dir, tmp: Path, every: int, sizes: list[int], gains: list[float]) -> dict:
    """Per level and size band of the bench's positives: right brand of the level's best match, median best score."""
    from markguard.datasets.realbench import BANDS, POSITIVE_TIERS, read_truth

    truth = [t for t in read_truth(bench / "truth.csv").values() if int(t.listing_id.rsplit("-", 1)[1]) % every == 0]
    build_index(bench / "gallery", tmp / "bench-index", model=model_dir, kind="flat", device="cpu")
    index = MarkIndex.load(tmp / "bench-index")
    images = [decode_image(bench / "listings" / f"{t.listing_id}.jpg", target_size=prep.scan_size * 4).image.convert("RGB") for t in truth]
    best, rid = per_level_best(model, card, prep, index, images)
    brand_of = {int(r): rec.brand for r, rec in zip(np.unique(rid[rid >= 0]).tolist(), index.get(np.unique(rid[rid >= 0]).tolist()))}
    out = {}
    print(f"\n# bench {bench}, every {every}th listing: per size band, right brand of each level's best match alone / median best score")
    print("| band | listings | " + " | ".join(f"{s} px right / median" for s in sizes) + " | best of levels with the gains: right | "
          "best of levels, no gains: right |")
    print("|---|---|" + "---|" * (len(sizes) + 2))
    for band in BANDS:
        sel = [i for i, t in enumerate(truth) if t.tier in POSITIVE_TIERS and t.band == band]
        if not sel:
            continue
        cells, row = [], {}
        for j in range(len(sizes)):
            right = float(np.mean([brand_of.get(int(rid[i, j])) == truth[i].brand for i in sel]))
            fin = best[sel, j][np.isfinite(best[sel, j])]
            medj = float(np.median(fin)) if len(fin) else math.nan
            cells.append(f"{right:.2f} / {medj:.3f}")
            row[str(sizes[j])] = {"right_brand": right, "median_best": medj}
        combined = []
        for g in (gains, [1.0] * len(gains)):
            pick = np.argmax(best[sel] * np.asarray(g, np.float32), axis=1)
            combined.append(float(np.mean([brand_of.get(int(rid[i, j])) == truth[i].brand for i, j in zip(sel, pick)])))
        row["combined_right_brand"], row["combined_right_brand_gain1"] = combined
        out[band] = {"listings": len(sel), **row}
        print(f"| {band} | {len(sel)} | " + " | ".join(cells) + f" | {combined[0]:.2f} | {combined[1]:.2f} |")
    neg = [i for i, t in enumerate(truth) if t.tier in ("unregistered", "none")]
    qs = {str(s): float(np.quantile(best[neg, j][np.isfinite(best[neg, j])], 0.99)) for j, s in enumerate(sizes)}
    print(f"# bench negatives ({len(neg)}): q99 best score per level {qs}")
    out["negatives_q99"] = qs
    np.savez(tmp / "bench_levels.npz", best=best, right=np.array([[brand_of.get(int(r)) == t.brand for r in rr] for rr, t in zip(rid, truth)]),
             tier=np.array([t.tier for t in truth]), band=np.array([t.band or "" for t in truth]))
    print(f"# per-photo arrays: {tmp / 'bench_levels.npz'}")
    return out


if __name__ == "__main__":
    main()
