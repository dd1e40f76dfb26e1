"""The scan's speed/accuracy frontier on the real-photo bench: scan sizes and second looks, one table.

Each setting is a ``markguard scan`` of the same listings with the same model, as a user runs it
(a subprocess; thresholds at -1 so every row names its best match; the benchmark sets its own
threshold at FPR 1% of the negatives), scored by ``train/realeval.score_bench``: per tier TPR at
FPR 1%, right brand, box IoU >= 0.5 among correctly named marks, ROC AUC, and the scan's images/s;
then per size band of the mark TPR / right brand of plain copies and of every positive, FPR of
unregistered marks, each setting at its own threshold (``realeval.band_table``).
Beside each, the model-only bound: images/s of the model's forward passes alone for that setting
(the first look at the scan size plus the second looks' crops at the input size, random pixels, the
same threads), which decode, search and writing must not pull the scan far below.

A different scan size or first-look pyramid (infer/pyramid.py) is a copy of the model folder with that
``scan_size`` and ``regions.pyramid`` in its card (a new fingerprint, so each gets its own index); second
looks are ``scan --looks N``. A setting is SIZE:LOOKS, or SIZE:LOOKS:PYRAMID with the pyramid's sizes
joined by '+', each optionally *GAIN (e.g. 320:1:320+128*0.97); without one, the first look is the one
scan-size pass (whatever the model's card says).

    python benchmarks/bench_frontier.py --bench BENCH --every 4 --bank 256 \\
        --settings "320:0" "320:1" "320:2" "320:4" "256:2" "384:2" "320:1:320+128" [--model RUN] [--sift]
    python benchmarks/bench_frontier.py --quick          # a tiny generated bench (for the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_real import markguard, open_bench, run_sift  # noqa: E402

from markguard.checkpoint import CARD, load_checkpoint, resolve_model_dir  # noqa: E402
from markguard.datasets.realbench import TIERS  # noqa: E402
from markguard.train.realeval import band_table, score_bench  # noqa: E402


def parse_setting(text: str) -> tuple[int, int, list]:
    """'SCAN_SIZE:LOOKS[:PYRAMID]' → (scan size, second looks a photo, the card's regions.pyramid)."""
    parts = text.split(":")
    try:
        size, looks = int(parts[0]), int(parts[1])
        levels = []
        for lv in (parts[2].split("+") if len(parts) > 2 else [parts[0]]):
            px, _, gain = lv.partition("*")
            levels.append({"size": int(px), "gain": float(gain)} if gain else int(px))
        if len(parts) > 3:
            raise ValueError
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"setting {text!r}: give SCAN_SIZE:LOOKS[:PYRAMID], e.g. 320:2 or 320:1:320+128") from None
    if size < 32 or looks < 0:
        raise argparse.ArgumentTypeError(f"setting {text!r}: scan size at least 32, looks 0 or more")
    return size, looks, levels


def setting_name(size: int, looks: int, pyramid: list) -> str:
    if pyramid == [size]:
        return f"{size}, {looks}"
    return f"{size}, {looks}, pyramid " + "+".join(str(v) if isinstance(v, int) else f"{v['size']}*{v['gain']:g}" for v in pyramid)


def model_at(model: Path, size: int, out: Path, pyramid: list | None = None) -> Path:
    """``model`` itself when its card already scans at ``size`` with this first-look ``pyramid`` (default: the one
    scan-size pass), else a copy whose card does."""
    pyramid = pyramid or [size]
    card = json.loads((model / CARD).read_text())
    if int(card["scan_size"]) == size and (card.get("regions") or {}).get("pyramid", [size]) == pyramid:
        return model
    copy = out / ("model-" + setting_name(size, 0, pyramid).replace(", ", "-").replace(" ", "-").replace("*", "x"))
    if not copy.exists():
        shutil.copytree(model, copy, ignore=shutil.ignore_patterns("last", "eval", "*.log", "*.csv"))
        from markguard.checkpoint import load_checkpoint as load, save_checkpoint

        m, c = load(copy)
        c.scan_size = size
        c.regions = {**c.regions, "pyramid": pyramid}
        save_checkpoint(m, c, copy)
    return copy


def model_only_rate(model: Path, size: int, looks: int, batch: int = 16, repeats: int = 5) -> float:
    """Images/s of the forward passes alone: a batch at each first-look size of the card (``size`` without a pyramid) and
    ``looks`` crops a photo at the input size."""
    import torch

    from markguard.preprocess import resolve_preprocessing

    m, card = load_checkpoint(model)
    # the first look's pyramid: a pass at each of its sizes (one at the scan size without a pyramid)
    xs = [torch.randn(batch, 3, lv.size, lv.size).contiguous(memory_format=torch.channels_last) for lv in resolve_preprocessing(card).pyramid]
    crops = torch.randn(batch * looks, 3, card.input_size, card.input_size).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.no_grad():
        for r in range(repeats + 1):
            t0 = time.perf_counter()
            for x in xs:
                m.forward_features(x)
            if looks:
                m.forward_features(crops)
            if r:  # the first pass warms the allocator and oneDNN's kernels up
                times.append(time.perf_counter() - t0)
    return batch / sorted(times)[len(times) // 2]


def run_setting(bench: Path, manifest: Path, truth: Path, model: Path, size: int, looks: int, out: Path, bank: int,
                repeats: int = 5) -> dict:
    index, scan = out / f"index-{model.name}", out / f"scan-{model.name}-{looks}"
    if not index.exists():
        markguard("index", "build", str(bench / "gallery"), "-o", str(index), "-m", str(model), *(["--bank", str(bank)] if bank else []))
    shutil.rmtree(scan, ignore_errors=True)
    # every row names its best match by similarity (the bench sets its own threshold at FPR 1%): no combiner
    markguard("scan", str(manifest), "-i", str(index), "-o", str(scan), "--quiet", "--no-combiner", "--flag-threshold", "-1",
              "--review-threshold", "-1", "--looks", str(looks))
    summary = json.loads((scan / "summary.json").read_text())
    return {"score": score_bench(scan / "results.jsonl", truth).to_json(), "images_per_s": float(summary["images_per_s"]),
            "at_any_score": at_any_score(scan / "results.jsonl", truth),
            "model_only_images_per_s": model_only_rate(model, size, looks, repeats=repeats)}


def at_any_score(results: Path, truth_path: Path) -> dict:
    """Without a threshold: per tier the share of photos whose best match is the right brand, and the median best score
    (for the negative tiers: how high a photo without a registered mark scores)."""
    import numpy as np

    from markguard.datasets.realbench import NEGATIVE_TIERS, read_truth
    from markguard.train.realeval import read_bench_results

    truth, rows = read_truth(truth_path), read_bench_results(results)
    out = {}
    for tier in TIERS:
        ids = [i for i, t in truth.items() if t.tier == tier]
        if ids:
            scores = [rows[i].score for i in ids if rows[i].score is not None]
            out[tier] = {"right_brand": float(np.mean([rows[i].brand == truth[i].brand for i in ids])) if tier not in NEGATIVE_TIERS else None,
                         "median_score": float(np.median(scores)) if scores else None}
    return out


def _f(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def table(results: dict[str, dict]) -> list[str]:
    positive = [t for t in TIERS if t not in ("unregistered", "none")]
    lines = ["| setting (scan size, looks) | img/s | model-only img/s | " + " | ".join(f"{t} TPR / right / IoU" for t in positive)
             + " | FPR unregistered / none | ROC AUC |", "|---|---|---|" + "---|" * len(positive) + "---|---|"]
    for name, r in results.items():
        tiers = r["score"]["tiers"]
        cells = [f"{_f(tiers[t]['flagged'])} / {_f(tiers[t]['right_brand'])} / {_f(tiers[t]['box_iou50'])}" for t in positive]
        fpr = f"{_f(tiers['unregistered']['flagged'])} / {_f(tiers['none']['flagged'])}"
        bound = r.get("model_only_images_per_s")
        lines.append(f"| {name} | {r['images_per_s']:.1f} | {_f(bound) if bound else '–'} | " + " | ".join(cells)
                     + f" | {fpr} | {r['score']['roc_auc']:.3f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", help="a bench folder from `markguard data realbench`")
    ap.add_argument("--model", help="checkpoint folder (default: the shipped model)")
    ap.add_argument("--settings", nargs="*", type=parse_setting, default=[(320, 0, [320]), (320, 2, [320])], metavar="SIZE:LOOKS[:PYRAMID]")
    ap.add_argument("--bank", type=int, default=256, metavar="N", help="index built with --bank N (0: none)")
    ap.add_argument("--every", type=int, default=1, help="score every N-th listing of each tier only")
    ap.add_argument("--sift", action="store_true", help="also run the SIFT + RANSAC matcher on the same listings")
    ap.add_argument("--out", help="folder for the scans and bench_frontier.json (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="a tiny bench from generated sources (for the tests)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="markguard-frontier-")
    out, bench, manifest, truth = open_bench(ap, args, tmp.name)
    if args.quick:  # a smoke test of every step, not a measurement
        args.bank = min(args.bank, 16)
        args.settings = [(96, 0, [96]), (96, 1, [96]), (96, 1, [96, 48])]
    model = resolve_model_dir(args.model)
    results: dict[str, dict] = {}
    for size, looks, pyramid in args.settings:
        results[setting_name(size, looks, pyramid)] = run_setting(bench, manifest, truth, model_at(model, size, out, pyramid), size, looks,
                                                                  out, args.bank, repeats=1 if args.quick else 5)
        # what is done so far, in case a slow machine runs out of time before the last setting
        (out / "bench_frontier.partial.json").write_text(json.dumps({"bench": str(bench), "every": args.every, "results": results}, indent=2))
    if args.sift:
        score, rate = run_sift(bench, manifest, truth, out / "sift")
        results["SIFT + RANSAC"] = {"score": score, "images_per_s": rate}
    print(f"# bench {bench}, model {model}" + (f", every {args.every}th listing" if args.every > 1 else "")
          + (f", index --bank {args.bank}" if args.bank else ""))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print("\n".join(table(results)))
    scores = [r["score"] for r in results.values()]
    print("\n".join(band_table(scores[0], list(results), scores[1:])))
    for name, r in results.items():
        if "at_any_score" in r:
            print(f"# {name}, without a threshold (right brand / median best score): "
                  + ", ".join(f"{t} {_f(v['right_brand'])} / {_f(v['median_score'])}" for t, v in r["at_any_score"].items()))
    (out / "bench_frontier.json").write_text(json.dumps({"bench": str(bench), "model": str(model), "every": args.every,
                                                          "results": results}, indent=2))


if __name__ == "__main__":
    main()
