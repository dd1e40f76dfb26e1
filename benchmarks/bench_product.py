"""Product bench: per edit type, how well the product model finds the catalogue photo a listing copies,
against PDQ (Meta's perceptual hash, as HMA matches) and the ImageNet EfficientNet-Lite0 used as is.

    markguard data productbench --out data/product-bench
    python benchmarks/bench_product.py --bench data/product-bench --model product \\
        --bank-photos data/product-train --out benchmarks/results/product.md

Every method sees the same listings and catalogue photos in the same run. The two embedding
models embed a catalogue photo as ``markguard index build`` does (whole, letterboxed to the card's
scan size) and a listing as the scan does (the whole photo and the card's grid of large regions,
pooled from one backbone pass; a listing's score for a reference is its best region's). With
``--bank-photos``, scores are normalised against a background bank of those photos (infer/bank.py),
as an index built with ``--bank-photos`` scores them. PDQ compares whole images (the listing's hash
against the 8 dihedral hashes of each catalogue photo), which is how a hash matcher works.

Metrics (DISC21-style, one prediction per listing: its best reference and score):
- µAP: average precision of the predictions ranked by score, over the copies (a copy whose best
  reference is the wrong one is a false positive);
- recall at precision 0.90;
- TPR at FPR 1%: the threshold lets through 1% of all non-copy listings (distractors and
  near-duplicates, every edit), and TPR is the share of copies matched to their own photo above it;
  "(distractors)": the same with the threshold set on the other photos only, leaving out the
  near-duplicates (several are stereo pairs: nearly the same picture, which no global descriptor
  tells from a copy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from markguard.checkpoint import load_checkpoint, resolve_model_dir  # noqa: E402


def load_truth(bench: Path) -> tuple[list[dict], list[tuple[str, Path]]]:
    truth = [json.loads(line) for line in (bench / "truth.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    refs = sorted((p.stem, p) for p in (bench / "catalogue").glob("*/*") if p.is_file())
    return truth, refs


# ----------------------------------------------------------------------------- embedding methods

@torch.no_grad()
def embed_listings(model, card, paths: list[Path], batch: int = 16) -> tuple[list[np.ndarray], list[float]]:
    """Each listing's region vectors (whole photo first, then the card's grid), as the scan pools them."""
    from markguard.datasets.decode import decode_image
    from markguard.datasets.transforms import letterbox
    from markguard.infer.embed import embed_regions
    from markguard.infer.regions import grid_boxes

    regions = card.regions or {}
    out, times = [], []
    for i in range(0, len(paths), batch):
        t = time.perf_counter()
        lbs = [letterbox(decode_image(p, target_size=card.scan_size).image, card.scan_size, card.mean, card.std) for p in paths[i : i + batch]]
        x = torch.stack([lb.tensor for lb in lbs])
        boxes = [grid_boxes(*lb.valid, scales=regions.get("scales", (1.0,)), overlap=regions.get("overlap", 0.5)) for lb in lbs]
        emb = embed_regions(model, card, x, boxes)
        vec = emb.vectors.float().cpu().numpy()
        start = 0
        for c in emb.counts:
            out.append(vec[start : start + c])
            start += c
        times.append((time.perf_counter() - t) / len(lbs))
    return out, times


def bank_bias(model, card, refs: np.ndarray, bank_photos: list[Path], procedural: int) -> np.ndarray:
    from markguard.infer.bank import background_bank, bank_images, reference_bias

    bank = background_bank(model, card, bank_images(procedural, card.scan_size, photos=bank_photos))
    return reference_bias(refs, bank)


def embedding_scores(model, card, refs: list[tuple[str, Path]], listings: list[Path], bank_photos, procedural: int):
    """(listings, refs) similarity — raw and bank-normalised — with the best region per reference."""
    from markguard.datasets.registry import MarkRef
    from markguard.infer.bank import normalise
    from markguard.infer.build import embed_catalogue

    cat = embed_catalogue([MarkRef("b", s, p) for s, p in refs], model, card)
    if cat.errors:
        raise SystemExit(f"catalogue photos unreadable: {cat.errors}")
    regs, times = embed_listings(model, card, listings)
    raw = np.stack([(r @ cat.vectors.T).max(axis=0) for r in regs])
    out = {"raw": raw}
    if bank_photos is not None:
        bias = bank_bias(model, card, cat.vectors, bank_photos, procedural)
        out["bank"] = np.stack([normalise(r @ cat.vectors.T, bias[None, :]).max(axis=0) for r in regs])
    return out, times


def imagenet_lite0(card):
    """The ImageNet EfficientNet-Lite0 as is: its backbone, GeM-pooled, no trained projection (1280-d)."""
    import dataclasses

    from markguard.checkpoint import create_model
    from markguard.pretrained import load_into, resolve_init

    c = dataclasses.replace(card, dim=1280)
    m = create_model(c)
    load_into(m.backbone, resolve_init("efficientnet-lite0"))
    m.head = torch.nn.Identity()
    return m.eval(), c


def pdq_scores(refs: list[tuple[str, Path]], listings: list[Path]) -> np.ndarray:
    import pdqhash
    from PIL import Image

    def arr(p):
        return np.asarray(Image.open(p).convert("RGB"))

    ref_hashes = [np.stack(pdqhash.compute_dihedral(arr(p))[0]).astype(bool) for _, p in refs]  # (8, 256) each
    out = np.zeros((len(listings), len(refs)), np.float32)
    for i, p in enumerate(listings):
        h = pdqhash.compute(arr(p))[0].astype(bool)
        for j, rh in enumerate(ref_hashes):
            out[i, j] = 1.0 - (rh != h).sum(axis=1).min() / 256.0
    return out


# ----------------------------------------------------------------------------- metrics

def predictions(scores: np.ndarray, ref_names: list[str], truth: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per listing: best score, whether it is a correct match (a copy matched to its own photo), whether it is a copy."""
    best = scores.argmax(axis=1)
    s = scores[np.arange(len(scores)), best]
    copy = np.array([t["kind"] == "copy" for t in truth])
    correct = np.array([t["source"] == ref_names[b] for t, b in zip(truth, best)])
    return s, correct & copy, copy


def micro_ap(s, correct, n_copies: int) -> float:
    if n_copies == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    tp = correct[order].astype(np.float64)
    cum = np.cumsum(tp)
    prec = cum / np.arange(1, len(tp) + 1)
    return float((prec * tp).sum() / n_copies)


def recall_at_precision(s, correct, n_copies: int, p: float = 0.9) -> float:
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(correct[order])
    prec = tp / np.arange(1, len(tp) + 1)
    ok = prec >= p
    return float(tp[ok].max() / n_copies) if ok.any() and n_copies else 0.0


def threshold_at_fpr(s, copy, fpr: float = 0.01) -> float:
    neg = np.sort(s[~copy])[::-1]
    k = int(np.floor(fpr * len(neg)))  # at most k negatives strictly above the threshold
    return float(neg[k]) if len(neg) else float("-inf")


def table(scores: np.ndarray, ref_names: list[str], truth: list[dict], edits: list[str]) -> dict:
    s, correct, copy = predictions(scores, ref_names, truth)
    thr = threshold_at_fpr(s, copy)
    kinds = np.array([t["kind"] for t in truth])
    other = kinds == "distractor"  # other photos only: near-duplicates (another shot of a catalogue scene) not counted
    thr_d = threshold_at_fpr(s[copy | other], copy[copy | other])
    edit = np.array([t["edit"] for t in truth])
    rows = {}
    groups = [(e, edit == e) for e in edits]
    singles = np.array(["+" not in e for e in edit])
    groups += [("all single edits", singles), ("compositions of two", ~singles), ("all", np.ones(len(truth), bool))]
    for name, m in groups:
        n = int((copy & m).sum())
        rows[name] = {"uAP": micro_ap(s[m], correct[m], n), "R@P90": recall_at_precision(s[m], correct[m], n),
                      "TPR@FPR1%": float((correct & m & (s > thr)).sum() / max(1, n)),
                      "TPR@FPR1% (distractors)": float((correct & m & (s > thr_d)).sum() / max(1, n)),
                      "copies": n, "negatives": int((~copy & m).sum())}
    near = kinds == "near_duplicate"
    rows["_threshold"] = thr
    rows["_near_duplicates_above"] = float((s[near] > thr).mean()) if near.any() else float("nan")
    return rows


# ----------------------------------------------------------------------------- report

def without_near_duplicates(scores: np.ndarray, ref_names: list[str], truth: list[dict], edits: list[str]) -> dict:
    """The table over copies and other photos only: what a global descriptor reaches when no listing is another shot
    of a catalogue photo's scene (which every method here scores like a copy)."""
    keep = np.array([t["kind"] != "near_duplicate" for t in truth])
    return table(scores[keep], ref_names, [t for t, k in zip(truth, keep) if k], edits)


def write_report(path: Path, results: dict, meta: dict, edits: list[str], no_near: dict | None = None) -> None:
    methods = list(results)
    lines = [f"# Product bench: catalogue photos found in edited listings\n",
             f"Measured {meta['date']} on {meta['machine']} (shared, loaded by other jobs: times are indicative only).",
             f"Command: `{meta['command']}`\n",
             f"Bench: `markguard data productbench --out data/product-bench` (seed {meta['bench'].get('seed')}): "
             f"{meta['bench'].get('catalogue')} catalogue photos; {meta['bench'].get('listings')} listings = "
             f"{meta['bench'].get('copies')} copies, {meta['bench'].get('distractors')} distractors (other photos edited the same way), "
             f"{meta['bench'].get('near_duplicates')} near-duplicates (another shot of a catalogue photo's scene, edited the same way). "
             "Photos: Debian opencv-doc and lomiri-wallpapers-20.04, scikit-image's motorcycle stereo pair — none in the product model's training.\n",
             f"Product model: `{meta['model']}` ({meta['model_steps']} training steps). Bank: {meta['bank']}.\n",
             "Methods: " + "; ".join(f"**{m}**" for m in methods) + ".\n"]
    for metric in ("uAP", "R@P90", "TPR@FPR1%", "TPR@FPR1% (distractors)"):
        lines.append(f"\n## {metric}\n")
        lines.append("| edit | copies | " + " | ".join(methods) + " |")
        lines.append("|---|---:|" + "---:|" * len(methods))
        for e in edits + ["all single edits", "compositions of two", "all"]:
            n = results[methods[0]][e]["copies"]
            cells = [f"{results[m][e][metric]:.3f}" for m in methods]
            best = max(results[m][e][metric] for m in methods)
            cells = [f"**{c}**" if results[m][e][metric] == best else c for c, m in zip(cells, methods)]
            name = f"**{e}**" if e in ("all single edits", "compositions of two", "all") else e
            lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    if no_near:
        lines.append("\n## Without the near-duplicate listings: µAP / R@P90\n")
        lines.append("The same scores, the 120 near-duplicate listings (another shot of a catalogue photo's scene, edited) left out: "
                     "copies against other photos only.\n")
        lines.append("| edit | " + " | ".join(methods) + " |")
        lines.append("|---|" + "---:|" * len(methods))
        for e in edits + ["all single edits", "compositions of two", "all"]:
            name = f"**{e}**" if e in ("all single edits", "compositions of two", "all") else e
            lines.append(f"| {name} | " + " | ".join(f"{no_near[m][e]['uAP']:.3f} / {no_near[m][e]['R@P90']:.3f}" for m in methods) + " |")
    lines.append("\n## Near-duplicates (another shot, not a copy) scored above the FPR-1% threshold\n")
    lines.append("| method | threshold | share of near-duplicate listings above it |")
    lines.append("|---|---:|---:|")
    for m in methods:
        lines.append(f"| {m} | {results[m]['_threshold']:.3f} | {results[m]['_near_duplicates_above']:.3f} |")
    if meta.get("timing"):
        lines.append(f"\nEmbedding a listing (decode, letterbox, one backbone pass, {meta['timing']['regions']} regions pooled): "
                     f"median {meta['timing']['median_ms']:.0f} ms on one thread of the shared machine.")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def quick_bench() -> Path:
    """A tiny product bench from procedural pictures (``--quick``): gradients and shapes, 8 photos, 4 of them catalogue."""
    import tempfile

    from PIL import Image, ImageDraw

    from markguard.datasets.productbench import ProductBenchConfig, build_productbench

    root = Path(tempfile.mkdtemp(prefix="markguard-product-quick-"))
    rng = np.random.default_rng(0)
    (root / "photos" / "procedural").mkdir(parents=True)
    for i in range(8):
        a = rng.integers(0, 255, 3)
        b = rng.integers(0, 255, 3)
        t = np.linspace(0, 1, 480)[None, :, None]
        img = Image.fromarray(np.broadcast_to(a * (1 - t) + b * t, (360, 480, 3)).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = (int(v) for v in rng.integers(0, 380, 2))
            d.ellipse([x0, y0, x0 + int(rng.integers(30, 100)), y0 + int(rng.integers(30, 100))], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        img.save(root / "photos" / "procedural" / f"p{i}.png")
    build_productbench(root / "photos", root / "bench", ProductBenchConfig(catalogue=4, long_side=400))
    return root / "bench"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default="data/product-bench")
    ap.add_argument("--model", default="product", help="the product model (a folder or a shipped model's name)")
    ap.add_argument("--bank-photos", help="folder of photos for the background bank (not the bench's)")
    ap.add_argument("--bank", type=int, default=32, help="procedural bank pictures beside the photos (default 32)")
    ap.add_argument("--out", help="markdown report to write")
    ap.add_argument("--json", help="raw numbers to write")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, help="only the first N listings (a quick check)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: a bench of 4 catalogue photos built from procedural "
                    "pictures in a temporary folder, 24 listings, no bank (checks the script runs; the figures mean nothing)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.bench, args.limit, args.bank, args.bank_photos = str(quick_bench()), args.limit or 24, 0, None
    bench = Path(args.bench)
    truth, refs = load_truth(bench)
    if args.limit:
        truth = truth[: args.limit]
    listings = [bench / t["listing"] for t in truth]
    names = [s for s, _ in refs]
    info = json.loads((bench / "bench.json").read_text(encoding="utf-8"))
    edits = info["edits"]
    bank_photos = None
    if args.bank_photos:
        from markguard.train.copydetect import list_photos

        bank_photos = list_photos([args.bank_photos])
    model_dir = resolve_model_dir(args.model)
    model, card = load_checkpoint(model_dir)
    results = {}
    t0 = time.time()
    prod, times = embedding_scores(model, card, refs, listings, bank_photos, args.bank)
    results["product model"] = table(prod["raw"], names, truth, edits)
    no_near = {"product model": without_near_duplicates(prod["raw"], names, truth, edits)}
    if "bank" in prod:
        results["product model + bank"] = table(prod["bank"], names, truth, edits)
        no_near["product model + bank"] = without_near_duplicates(prod["bank"], names, truth, edits)
    print(f"product model: {time.time() - t0:.0f}s", file=sys.stderr)
    t0 = time.time()
    lite, lcard = imagenet_lite0(card)
    base, _ = embedding_scores(lite, lcard, refs, listings, bank_photos, args.bank)
    results["ImageNet Lite0 as is"] = table(base["raw"], names, truth, edits)
    no_near["ImageNet Lite0 as is"] = without_near_duplicates(base["raw"], names, truth, edits)
    if "bank" in base:
        results["ImageNet Lite0 + bank"] = table(base["bank"], names, truth, edits)
        no_near["ImageNet Lite0 + bank"] = without_near_duplicates(base["bank"], names, truth, edits)
    print(f"lite0: {time.time() - t0:.0f}s", file=sys.stderr)
    t0 = time.time()
    pdq = pdq_scores(refs, listings)
    results["PDQ"] = table(pdq, names, truth, edits)
    no_near["PDQ"] = without_near_duplicates(pdq, names, truth, edits)
    print(f"pdq: {time.time() - t0:.0f}s", file=sys.stderr)
    import platform

    regions = card.regions or {}
    from markguard.infer.regions import grid_boxes

    n_regions = len(grid_boxes(card.scan_size, int(card.scan_size * 0.75), scales=regions.get("scales", (1.0,)), overlap=regions.get("overlap", 0.5)))
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()} CPU, {args.threads} thread(s), torch {torch.__version__}",
            "command": "python benchmarks/bench_product.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "bench": info, "model": str(args.model), "model_steps": card.training.get("steps"),
            "bank": (f"{args.bank} procedural pictures + {len(bank_photos)} photos of {args.bank_photos}" if bank_photos else "none"),
            "timing": {"median_ms": 1000 * float(np.median(times)), "regions": f"{n_regions} (a 4:3 photo)"}}
    for m, r in results.items():
        a = r["all single edits"]
        c = r["compositions of two"]
        print(f"{m:24s} singles uAP {a['uAP']:.3f} R@P90 {a['R@P90']:.3f} TPR@1% {a['TPR@FPR1%']:.3f} | "
              f"pairs uAP {c['uAP']:.3f} R@P90 {c['R@P90']:.3f} TPR@1% {c['TPR@FPR1%']:.3f}")
    if args.out:
        write_report(Path(args.out), results, meta, edits, no_near)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results, "without_near_duplicates": no_near}, indent=1, default=float),
                                   encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
