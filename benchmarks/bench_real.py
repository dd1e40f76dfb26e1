"""The real-photo benchmark, learned models against the classical bar: one bench folder, one command, one table.

(a) each model given: ``markguard index build`` of the bench's gallery and ``markguard scan`` of its
listings, as a user runs them (subprocesses, the model card's region settings; thresholds at -1 so
that every row names its best match: the benchmark sets its own threshold, at FPR 1% of the
negatives); (b) the SIFT + RANSAC matcher of ``train/baseline.py`` on the same photos. Both are
scored by ``train/realeval.score_bench``: per tier TPR at FPR 1%, right brand, box IoU >= 0.5 among
correctly named marks; ROC AUC, the hub figure and images/s; then per size band of the mark (its box
long side over the photo's short side) TPR at the same threshold and right brand of plain copies and of
every positive, and the FPR of unregistered marks (a bench built before size bands has no band table).

    markguard data realbench --marks devicon-2.17.0.tgz --cross simple-icons-16.37.0.tgz --photos PHOTOS --out BENCH
    python benchmarks/bench_real.py --bench BENCH [--model RUN ...] [--out DIR] [--every 2]
    python benchmarks/bench_real.py --quick       # generated sources, the shipped model: for the tests
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from markguard.datasets.realbench import TIERS
from markguard.train.baseline import SiftConfig, sift_scan
from markguard.train.realeval import band_table, score_bench


def markguard(*args: str) -> None:
    cmd = [sys.executable, "-m", "markguard.cli", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {shlex.join(cmd)}\n{done.stderr[-2000:]}")


def subset(bench: Path, out: Path, every: int) -> tuple[Path, Path]:
    """Every ``every``-th listing of each tier: a manifest beside the bench's own (a scan reads only under its folder), and its truth."""
    import csv

    if every == 1:
        return bench / "listings" / "manifest.csv", bench / "truth.csv"
    with open(bench / "truth.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if int(r["listing_id"].rsplit("-", 1)[1]) % every == 0]
        fields = reader.fieldnames
    manifest, truth = bench / "listings" / f"manifest-every{every}.csv", out / f"truth-every{every}.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["listing_id", "image_path"], *([r["listing_id"], f"{r['listing_id']}.jpg"] for r in rows)])
    with open(truth, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return manifest, truth


def open_bench(ap: argparse.ArgumentParser, args, default_out: str) -> tuple[Path, Path, Path, Path]:
    """The output folder, the bench (``--bench``, or with ``--quick`` a tiny one generated in it) and the
    manifest and truth of its every ``--every``-th listing: the set-up bench_real and bench_frontier share."""
    out = Path(args.out or default_out)
    out.mkdir(parents=True, exist_ok=True)
    bench = Path(args.bench) if args.bench else None
    if args.quick:
        from markguard.datasets.realbench import BenchConfig, build_realbench, write_sample_sources

        src = write_sample_sources(out / "sources", brands=12, photos=4)
        bench = out / "bench"
        build_realbench(src["marks"], [src["photos"]], bench, cross_dir=src["cross"], cfg=BenchConfig(brands=6, listings=33))
    if bench is None:
        ap.error("--bench is required (or --quick)")
    if args.every < 1:
        ap.error("--every must be at least 1")
    return (out, bench, *subset(bench, out, args.every))


def run_model(bench: Path, manifest: Path, truth: Path, model: str | None, out: Path, scan_args: list[str],
              index_args: list[str] = ()) -> tuple[dict, float]:
    index, scan = out / "index", out / "scan"
    markguard("index", "build", str(bench / "gallery"), "-o", str(index), *(["-m", model] if model else []), *index_args)
    # every row names its best match by similarity (the bench sets its own threshold at FPR 1%): no combiner
    markguard("scan", str(manifest), "-i", str(index), "-o", str(scan), "--quiet", "--no-combiner",
              "--flag-threshold", "-1", "--review-threshold", "-1", *scan_args)
    summary = json.loads((scan / "summary.json").read_text())  # the scan's own rate: photos over the scan loop's time
    return score_bench(scan / "results.jsonl", truth).to_json(), float(summary["images_per_s"])


def run_sift(bench: Path, manifest: Path, truth: Path, out: Path) -> tuple[dict, float]:
    summary = sift_scan(manifest, bench / "gallery", out, SiftConfig(), progress=True)
    # like the scan's rate: photos over the matching loop's time (indexing the references is timed apart)
    return score_bench(out / "results.jsonl", truth).to_json(), float(summary["images_per_s"])


def _cell(s: dict, positive: bool) -> str:
    f = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
    return f"{f(s['flagged'])} / {f(s['right_brand'])} / {f(s['box_iou50'])}" if positive else f"FPR {f(s['flagged'])}"


def table(results: dict[str, tuple[dict, float]]) -> list[str]:
    names = list(results)
    lines = ["| tier (listings) | " + " | ".join(f"{n}: TPR@FPR1% / right brand / box IoU>=0.5" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    first = results[names[0]][0]
    for tier in (*TIERS, "all_positive"):
        n = (first["tiers"].get(tier) or first["all_positive"])["listings"] if tier != "all_positive" else first["all_positive"]["listings"]
        cells = [_cell(r["tiers"][tier] if tier != "all_positive" else r["all_positive"], tier not in ("unregistered", "none")) for r, _ in results.values()]
        lines.append(f"| {tier.replace('_', ' ')} ({n}) | " + " | ".join(cells) + " |")
    lines.append("| ROC AUC | " + " | ".join(f"{r['roc_auc']:.3f}" for r, _ in results.values()) + " |")
    lines.append("| hub: top reference's share (count) of photos not showing it | "
                 + " | ".join(f"{r['hub']['share'] or 0:.3f} ({r['hub']['count']} of {r['hub']['photos']}, {r['hub']['reference']})" for r, _ in results.values()) + " |")
    lines.append("| img/s | " + " | ".join(f"{rate:.1f}" for _, rate in results.values()) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", help="a bench folder from `markguard data realbench`")
    ap.add_argument("--model", action="append", help="checkpoint folder; repeat to compare several (default: the shipped model)")
    ap.add_argument("--no-sift", action="store_true", help="skip the SIFT + RANSAC baseline")
    ap.add_argument("--bank", type=int, default=0, metavar="N",
                    help="also run each model with an index built with --bank N (scores normalised against N background pictures)")
    ap.add_argument("--scan-args", default="", help="extra `markguard scan` arguments, e.g. '--verify --workers 1'")
    ap.add_argument("--every", type=int, default=1, help="score every N-th listing of each tier only (a slow machine; default 1: all)")
    ap.add_argument("--out", help="folder for the scans and bench_real.json (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="a tiny bench from generated sources (for the tests)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="markguard-bench-real-")
    out, bench, manifest, truth = open_bench(ap, args, tmp.name)
    models = args.model or [None]
    results: dict[str, tuple[dict, float]] = {}
    for i, model in enumerate(models):
        name = Path(model).name if model else "shipped model"
        results[name] = run_model(bench, manifest, truth, model, out / f"model-{i}", shlex.split(args.scan_args))
        if args.bank:
            results[f"{name} + bank {args.bank}"] = run_model(bench, manifest, truth, model, out / f"model-{i}-bank",
                                                              shlex.split(args.scan_args), ["--bank", str(args.bank)])
    if not args.no_sift:
        results["SIFT + RANSAC"] = run_sift(bench, manifest, truth, out / "sift")
    info = json.loads((bench / "bench.json").read_text()) if (bench / "bench.json").exists() else {}
    print(f"# bench {bench}: {len(info.get('gallery_brands', []))} registered brands, {len(info.get('sources', {}).get('photos', []))} photos, "
          f"listings per tier {info.get('listings_per_tier')}" + (f", every {args.every}th scored" if args.every > 1 else ""))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print("\n".join(table(results)))
    runs = [r for r, _ in results.values()]
    print("\n".join(band_table(runs[0], list(results), runs[1:])))
    (out / "bench_real.json").write_text(json.dumps({"bench": str(bench), "listings_per_tier": info.get("listings_per_tier"),
                                                      "results": {n: {**r, "images_per_s": round(rate, 2)} for n, (r, rate) in results.items()}}, indent=2))
    print(f"# -> {out / 'bench_real.json'}" if args.out else "")


if __name__ == "__main__":
    main()
