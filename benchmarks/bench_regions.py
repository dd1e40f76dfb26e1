"""Region modes side by side: the same synthetic dump, the same model and index, each mode's accuracy and speed.

Modes: ``none`` (whole image), ``grid`` (multi-scale grid pooled from one backbone pass),
``learned`` (the model's proposal head), ``learned+grid``, ``tiles`` (the grid cropped and run
through the backbone one by one: the slow baseline), and ``learned`` with geometric verification.

Accuracy, per mark size (the mark's long side over the photo's short side: small < 15%,
medium < 35%, large), on photos with at most one mark:

* TPR@FPR1%: share of photos showing a registered mark whose best score clears the threshold
  that flags 1% of the photos without one (no mark, or an unregistered distractor);
* right mark: among those, the best match names the mark shown;
* box IoU>=0.5: among right-mark detections, the match's box overlaps the truth by IoU >= 0.5.

Speed: images/s of the whole scan (decode included, one process, no decode workers) and the
seconds spent in the regions+embed and verify stages.

    python benchmarks/bench_regions.py --model RUN --gallery GALLERY --listings 200
    python benchmarks/bench_regions.py --quick        # an untrained tiny model, a few photos: for the tests
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from markguard.boxes import iou
from markguard.checkpoint import ModelCard, create_model, fingerprint, load_checkpoint
from markguard.datasets.decode import load_mark
from markguard.datasets.registry import load_gallery
from markguard.datasets.synth import Backgrounds, SynthConfig, SynthMark, make_listing, make_marks, write_gallery
from markguard.infer.decide import Policy
from markguard.infer.embed import embed_references
from markguard.infer.index import MarkIndex
from markguard.infer.scan import ScanOptions, Searcher, StageTimes, scan_rows

SIZES = (("small", 0.0, 0.15), ("medium", 0.15, 0.35), ("large", 0.35, 10.0))
MODES = (("none", False), ("grid", False), ("learned", False), ("learned+grid", False), ("tiles", False), ("learned", True))


@dataclass
class Truth:
    mark: str | None  # the registered mark shown, None for a negative
    box: tuple[int, int, int, int] | None
    size: str | None




def size_of(box, w: int, h: int) -> str:
    rel = max(box[2] - box[0], box[3] - box[1]) / min(w, h)
    return next(name for name, lo, hi in SIZES if lo <= rel < hi)


def make_dump(marks: list[SynthMark], folder: Path, n: int, size: tuple[int, int], seed: int) -> dict[str, Truth]:
    """``n`` listing photos with zero or one mark (registered or distractor) written as JPEGs; their truth."""
    distractors = make_marks(4, 1, seed=seed + 10_000, prefix="other")
    cfg = SynthConfig(size=size, scale=(0.08, 0.6), p_no_mark=0.3, p_distractor=0.2, p_near_match=0.0, max_marks=1)
    rng = np.random.default_rng(seed)
    bgs = Backgrounds(None)
    truth = {}
    for i in range(n):
        lst = make_listing(rng, marks, distractors, bgs, cfg)
        lid = f"L{i:05d}"
        lst.image.save(folder / f"{lid}.jpg", quality=92)
        reg = [m for m in lst.marks if m.registered]
        t = Truth(None, None, None)
        if reg:
            t = Truth(reg[0].mark, reg[0].box, size_of(reg[0].box, *lst.image.size))
        truth[lid] = t
    return truth


def tpr_threshold(neg: np.ndarray, fpr: float) -> float:
    """The lowest score that flags at most ``fpr`` of the negatives."""
    srt = np.sort(neg)[::-1]
    k = int(np.floor(fpr * len(srt)))
    return float(srt[k] + 1e-6) if k < len(srt) else float(srt[-1])


def score_mode(rows, truth: dict[str, Truth], fpr: float = 0.01) -> dict:
    best = {r.listing_id: r for r in rows if r.status != "error"}
    neg = np.array([best[k].score if best[k].score is not None else -1.0 for k, t in truth.items() if t.mark is None and k in best])
    thr = tpr_threshold(neg, fpr) if len(neg) else 0.0
    out = {"threshold": round(thr, 4), "negatives": int(len(neg))}
    for name in ("all",) + tuple(s[0] for s in SIZES):
        pos = [(k, t) for k, t in truth.items() if t.mark is not None and k in best and (name == "all" or t.size == name)]
        hit = [(k, t) for k, t in pos if (best[k].score or -1.0) >= thr]
        right = [(k, t) for k, t in hit if best[k].matches and best[k].matches[0].mark == t.mark]
        boxed = [1 for k, t in right if best[k].matches[0].box and iou(best[k].matches[0].box, t.box) >= 0.5]
        out[name] = {"n": len(pos), "tpr": len(hit) / len(pos) if pos else float("nan"),
                     "right_mark": len(right) / len(hit) if hit else float("nan"),
                     "box_iou50": len(boxed) / len(right) if right else float("nan")}
    return out


@torch.no_grad()
def region_recall(model, card, dump: Path, truth: dict[str, Truth], mode: str) -> dict:
    """Localisation alone, whatever the embedding says: the share of marks that some region of ``mode``
    covers with IoU >= 0.5, by size, and the regions per photo (the embedding cost grows with them)."""
    from PIL import Image

    from markguard.datasets.transforms import letterbox
    from markguard.infer.regions import RegionMode, select_regions

    hits = {s[0]: [] for s in SIZES}
    counts = []
    for lid, t in truth.items():
        img = Image.open(dump / f"{lid}.jpg")
        lb = letterbox(img, card.scan_size, card.mean, card.std)
        fmap = model.forward_features(lb.tensor[None].contiguous(memory_format=torch.channels_last))
        m = RegionMode("grid" if mode == "tiles" else mode)
        boxes = select_regions(m, model, card, fmap, [lb.valid], card.scan_size)[0] / lb.factor
        counts.append(len(boxes))
        if t.mark is not None:
            hits[t.size].append(max(iou(b.tolist(), t.box) for b in boxes) >= 0.5)
    out = {k: (sum(v) / len(v) if v else float("nan")) for k, v in hits.items()}
    allv = [h for v in hits.values() for h in v]
    return out | {"all": sum(allv) / len(allv) if allv else float("nan"), "regions_per_image": float(np.mean(counts))}


def run_mode(dump: Path, searcher: Searcher, mode: str, verify: bool, batch_size: int) -> tuple[list, float, StageTimes]:
    opts = ScanOptions(regions=mode, verify=verify, workers=0, batch_size=batch_size, device="cpu", precision="fp32")
    times = StageTimes()
    t0 = time.perf_counter()
    rows = list(scan_rows(dump, [searcher], Policy(-1.0, -1.0), opts, times=times))
    return rows, time.perf_counter() - t0, times


def tiny_model():
    """An untrained resnet10t with a proposal head: numbers mean nothing, every code path runs."""
    torch.manual_seed(0)
    card = ModelCard(backbone="resnet10t", dim=16, output_stride=16, input_size=64, scan_size=96,
                     regions={"mode": "grid", "scales": [1.0, 0.5], "overlap": 0.0},
                     proposals={"top_k": 5, "hidden": 16, "score_thresh": 0.0})
    model = create_model(card).eval()
    card.fingerprint = fingerprint(model.state_dict(), card)
    return model, card


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="checkpoint folder (from markguard train)")
    ap.add_argument("--gallery", help="the gallery the model was trained on (its marks are the registered ones)")
    ap.add_argument("--listings", type=int, default=200)
    ap.add_argument("--size", type=int, nargs=2, default=(480, 360), help="listing photo size (W H)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--modes", help="comma-separated subset, e.g. none,learned,learned+verify")
    ap.add_argument("--grid-scales", type=float, nargs="+", help="override the model card's grid (grid and tiles modes)")
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--quick", action="store_true", help="an untrained tiny model on a few small photos (seconds)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-regions-") as tmp:
        tmp = Path(tmp)
        if args.quick:
            model, card = tiny_model()
            marks = make_marks(3, 1, seed=args.seed)
            gallery = write_gallery(marks, tmp / "gallery")
            n, size = 6, (128, 96)
            torch.set_num_threads(1)  # tiny tensors: a second thread only adds synchronisation
        else:
            if not args.model or not args.gallery:
                ap.error("give --model and --gallery (or --quick)")
            model, card = load_checkpoint(args.model)
            gallery = Path(args.gallery)
            n, size = args.listings, tuple(args.size)
        if args.grid_scales:
            card = dataclasses.replace(card, regions=card.regions | {"scales": list(args.grid_scales)})
        refs = load_gallery(gallery).marks
        marks = [SynthMark(r.brand, r.mark, load_mark(r.path), "mark") for r in refs]
        dump = tmp / "dump"
        dump.mkdir()
        truth = make_dump(marks, dump, n, size, args.seed)
        vectors = embed_references(model, card, [m.image for m in marks], precision="fp32")
        index = MarkIndex.build(vectors, [{"brand": r.brand, "mark": r.mark, "source": str(r.path)} for r in refs],
                                fingerprint=card.fingerprint, kind="flat")
        searcher = Searcher("", gallery, index, model, card, {})
        modes = [(m, v) for m, v in MODES if model.proposal_head is not None or not m.startswith("learned")]
        if args.modes:
            wanted = args.modes.split(",")
            modes = [(m, v) for m, v in modes if (m + ("+verify" if v else "")) in wanted]
        run_mode(dump, searcher, "none", False, args.batch_size)  # warm-up: thread pools, oneDNN kernels, page cache
        results = {}
        for mode, verify in modes:
            name = mode + ("+verify" if verify else "")
            rows, wall, times = run_mode(dump, searcher, mode, verify, args.batch_size)
            res = score_mode(rows, truth)
            st = times.seconds
            res |= {"images_per_s": len(rows) / wall, "wall_s": wall, "regions_embed_s": st["regions"] + st["embed"],
                    "verify_s": st["verify"]}
            if not verify:
                res["region_recall"] = region_recall(model, card, dump, truth, mode)
            else:
                res["region_recall"] = results.get(mode, {}).get("region_recall")
            results[name] = res
            print(f"# {name}: {len(rows)} images in {wall:.1f}s", flush=True)

    counts = {s: sum(t.size == s for t in truth.values()) for s, _, _ in SIZES}
    f = lambda v: "—" if v != v else f"{v:.2f}"  # noqa: E731 (nan prints as a dash)
    print()
    print(f"model: {args.model or 'tiny untrained (quick)'}; scan size {card.scan_size}; grid scales {card.regions.get('scales')}; {n} photos {size[0]}x{size[1]} "
          f"({sum(t.mark is None for t in truth.values())} without a registered mark; positives by size {counts}); "
          f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    print()
    print("| mode | regions/img | region recall@0.5 all | small | medium | large |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        rr = r.get("region_recall")
        if rr and not name.endswith("verify"):
            print(f"| {name} | {rr['regions_per_image']:.1f} | {f(rr['all'])} | {f(rr['small'])} | {f(rr['medium'])} | {f(rr['large'])} |")
    print()
    print("| mode | img/s | embed+regions s | verify s | TPR@FPR1% all | small | medium | large | right mark | box IoU>=0.5 | box small | box medium | box large |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['images_per_s']:.1f} | {r['regions_embed_s']:.1f} | {r['verify_s']:.1f} | {f(r['all']['tpr'])} | "
              f"{f(r['small']['tpr'])} | {f(r['medium']['tpr'])} | {f(r['large']['tpr'])} | {f(r['all']['right_mark'])} | "
              f"{f(r['all']['box_iou50'])} | {f(r['small']['box_iou50'])} | {f(r['medium']['box_iou50'])} | {f(r['large']['box_iou50'])} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"truth_sizes": counts, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
