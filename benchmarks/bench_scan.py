"""Scan throughput against the model alone, and scan memory against dump size.

Throughput: the end-to-end scan (read, decode in worker processes, regions, embed, search, decide,
write) against the model-only rate, the same forward pass plus region pooling on tensors decoded
beforehand, at the same resolution and batch size, in one run (measured alternately, model-only
before, between and after the scans, medians compared, as a shared machine's load drifts).
Target: e2e >= 90% of model-only.

Memory: peak RSS of a `markguard scan` subprocess (the main process and, separately, its largest
decode worker) for a small and a large dump; the manifest points many rows at a few photo files, since
flat memory is about the pipeline, not the pixels. Target: the large within 10% of the small.

    python benchmarks/bench_scan.py              # resnet18 at 320 px; memory for 1,000 vs 100,000 rows
    python benchmarks/bench_scan.py --quick      # tiny model and dumps, seconds (the test suite runs this)

Against SIFT + RANSAC (issue 22's target: end to end >= 2x its img/s at default settings, verification included):
every 4th listing of the real-photo bench, SIFT + RANSAC (train/baseline.py) and `markguard scan` at its defaults on
the same photos, in one run, each stage's share from the scan's summary; ``--before PYTHON`` adds the scan of another
checkout (its interpreter) to the same run, for a before/after table. The first scans are timed twice: right after
`markguard index build` of the bench's gallery (which caches the references' keypoints), and with an empty cache:

    python benchmarks/bench_scan.py --vs-sift data/realbench --index INDEX [--torch] [--before /other/.venv/bin/python --before-index IDX] [--rounds 3]

With ``--rounds N`` SIFT + RANSAC and the warm scans run N times, alternated, and the medians are reported (of the
img/s, and of each round's ratio to SIFT): a shared machine's speed drifts by 10-20% between minutes.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), platform.processor())
    except OSError:
        model = platform.processor()
    return f"{model}, {os.cpu_count()} CPUs visible, torch {torch.__version__}, {torch.get_num_threads()} torch threads"


def make_setup(root: Path, *, backbone: str, scan_size: int, photos: int, photo_size: tuple[int, int], output_stride: int = 16) -> dict:
    """A synthetic gallery and a few listing photos, a randomly initialised checkpoint and its index."""
    from markguard.checkpoint import ModelCard, create_model, save_checkpoint
    from markguard.datasets.synth import SynthConfig, synth_dataset
    from markguard.infer.build import build_index

    synth_dataset(root / "synth", brands=4, marks_per_brand=2, distractor_brands=1, listings=photos, seed=0,
                  cfg=SynthConfig(size=photo_size))
    torch.manual_seed(0)
    card = ModelCard(backbone=backbone, dim=128, input_size=min(128, scan_size), scan_size=scan_size, output_stride=output_stride)
    save_checkpoint(create_model(card), card, root / "model")
    build_index(root / "synth" / "gallery", root / "index", model=root / "model", device="cpu")
    return {"listings": root / "synth" / "listings", "model": root / "model", "index": root / "index"}


def write_manifest(listings: Path, rows: int, name: str) -> Path:
    """A manifest of ``rows`` rows cycling over the photos already in ``listings``."""
    photos = sorted(p.name for p in listings.glob("*.jpg"))
    path = listings / name
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["listing_id", "image_path", "seller_id"])
        for i in range(rows):
            w.writerow([f"R{i:07d}", photos[i % len(photos)], f"S{i % 50:04d}"])
    return path


def model_only(setup: dict, manifest: Path, *, batch_size: int, batches: int, regions: str | None) -> float:
    """Images/s of the model forward + region pooling on batches decoded beforehand (what the scan cannot beat)."""
    import itertools

    from markguard.datasets.listings import open_dump
    from markguard.infer.embed import embed_regions, feature_maps
    from markguard.infer.decode import decode_items
    from markguard.infer.regions import RegionMode, select_regions
    from markguard.infer.scan import load_searchers

    s = load_searchers([setup["index"]], None, "cpu")[0]
    items = list(itertools.islice(open_dump(manifest), batch_size * batches))
    decoded = [decode_items(items[i : i + batch_size], size=s.card.scan_size, mean=s.card.mean, std=s.card.std)
               for i in range(0, len(items), batch_size)]
    mode = RegionMode(regions or s.card.regions.get("mode", "grid"))

    def one(b):
        fmap = feature_maps(s.model, b.x)
        boxes = select_regions(mode, s.model, s.card, fmap, b.valid, b.x.shape[-1])
        embed_regions(s.model, s.card, b.x, boxes, fmap=fmap)

    one(decoded[0])  # warm-up: oneDNN picks its kernels on the first call
    t = time.perf_counter()
    for b in decoded:
        one(b)
    return sum(len(b.ok) for b in decoded) / (time.perf_counter() - t)


def throughput(setup: dict, *, images: int, batch_size: int, workers: int, regions: str | None, rounds: int = 2) -> dict:
    """Model-only and end-to-end rates measured alternately (A B A B A), medians compared: on a shared
    machine the load drifts within minutes, and alternating keeps both sides under the same drift."""
    import statistics

    from markguard.infer.scan import ScanOptions, run_scan

    manifest = write_manifest(setup["listings"], images, f"throughput-{images}.csv")
    batches = max(2, images // batch_size // 2)
    model_rates, scans = [], []
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp:
        for r in range(rounds + 1):
            model_rates.append(model_only(setup, manifest, batch_size=batch_size, batches=batches, regions=regions))
            if r < rounds:
                scans.append(run_scan(manifest, [setup["index"]], Path(tmp) / f"out{r}", progress=False,
                                      opts=ScanOptions(batch_size=batch_size, workers=workers, device="cpu", regions=regions)))
    model = statistics.median(model_rates)
    e2e = statistics.median(s["images_per_s"] for s in scans)
    return {"images_per_scan": images, "batch_size": batch_size, "workers": workers, "regions": regions or "card",
            "model_only_img_s": round(model, 2), "model_only_rounds": [round(x, 2) for x in model_rates],
            "e2e_img_s": round(e2e, 2), "e2e_rounds": [s["images_per_s"] for s in scans], "e2e_over_model": round(e2e / model, 3),
            "stage_seconds_last_scan": scans[-1]["stage_seconds"], "scan_seconds": [s["seconds"] for s in scans]}


RUSAGE_WRAPPER = """
import json, os, resource, sys
from markguard.cli import main
rc = main(sys.argv[2:])
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(json.dumps({"rc": rc, "main_kb": me.ru_maxrss, "worker_kb": kids.ru_maxrss}))
"""


def memory(setup: dict, rows: int, *, batch_size: int, workers: int) -> dict:
    """Peak RSS of a scan subprocess over a ``rows``-row manifest (main process; largest child separately)."""
    manifest = write_manifest(setup["listings"], rows, f"memory-{rows}.csv")
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        stats = Path(tmp) / "rusage.json"
        cmd = [sys.executable, "-c", RUSAGE_WRAPPER, str(stats), "scan", str(manifest), "-i", str(setup["index"]),
               "-o", str(Path(tmp) / "out"), "--regions", "none", "--batch-size", str(batch_size), "--workers", str(workers),
               "--device", "cpu", "--quiet"]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        r = json.loads(stats.read_text())
        summary = json.loads((Path(tmp) / "out" / "summary.json").read_text())
    return {"rows": rows, "main_peak_rss_mb": round(r["main_kb"] / 1024, 1), "worker_peak_rss_mb": round(r["worker_kb"] / 1024, 1),
            "scan_img_s": summary["images_per_s"], "wall_s": round(wall, 1), "command": " ".join(cmd[3:])}


def _tier_decisions(results: Path, truth: Path) -> dict:
    """What a user sees at the default thresholds, per tier of the bench: the share of listings flagged (for the right
    brand, on tiers that show a registered mark) and the share flagged or sent to review."""
    from markguard.datasets.realbench import read_truth
    from markguard.infer.results import read_results

    truth_rows = read_truth(truth)
    rows = {r.listing_id: r for r in read_results(results)}
    out: dict = {}
    for lid, t in truth_rows.items():
        r = rows.get(lid)
        if r is None:
            continue
        d = out.setdefault(t.tier, {"listings": 0, "flagged": 0, "flagged_right": 0, "flag_or_review": 0})
        d["listings"] += 1
        d["flagged"] += r.status == "flag"
        d["flagged_right"] += r.status == "flag" and t.brand is not None and r.brand == t.brand
        d["flag_or_review"] += r.status in ("flag", "review")
    return out


def vs_sift(bench: Path, index: Path, *, every: int = 4, workers: int = 1, before: str | None = None, model: str | None = None,
            before_index: Path | None = None, torch_too: bool = False, rounds: int = 1) -> dict:
    """img/s of SIFT + RANSAC and of `markguard scan` (defaults) on every ``every``-th listing of ``bench``, back to back.

    The scan runs twice with its default backend: first with an empty markguard cache (the backbone's ONNX graph
    exported and every reference's keypoints detected in the scan, as on the first scan against a new gallery), then
    warm (every later scan: the gallery changes far less often than the dumps). ``torch_too`` adds a warm scan with
    ``--backend torch``; ``before`` a scan by another checkout's interpreter (with its own ``before_index`` when its model
    differs). Each run's decisions per tier at the default thresholds come from the bench's truth."""
    from markguard.train.baseline import sift_scan

    rows = list(csv.DictReader((bench / "listings" / "manifest.csv").open()))[::every]
    out: dict = {"photos": len(rows), "bench": str(bench), "every": every}
    with tempfile.TemporaryDirectory(prefix="bench-vs-sift-") as tmp:
        tmp = Path(tmp)
        manifest = bench / "listings" / f".bench-scan-every{every}.csv"  # beside the photos: a manifest's paths are relative
        with manifest.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        try:
            cache, built_cache = tmp / "cache", tmp / "cache-built"

            def scan(name: str, python: str, idx: Path, extra: list, cache_dir: Path) -> dict:
                env = {**os.environ, "MARKGUARD_CACHE": str(cache_dir)}
                if name == "after_built":
                    t = time.perf_counter()
                    built = subprocess.run([python, "-P", "-m", "markguard.cli", "index", "build", str(bench / "gallery"), "-o", str(idx)]
                                           + (["-m", model] if model else []), check=True, capture_output=True, text=True, env=env)
                    out["index_build"] = {"seconds": round(time.perf_counter() - t, 1),
                                          "verify_cache": json.loads(built.stdout).get("verify_cache")}
                # -P: not the working folder first on the path, so another checkout's interpreter imports its own markguard
                cmd = [python, "-P", "-m", "markguard.cli", "scan", str(manifest), "-i", str(idx), "-o", str(tmp / name), "--workers", str(workers),
                       "--quiet"] + (["-m", model] if model else []) + extra
                shutil.rmtree(tmp / name, ignore_errors=True)
                t = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
                wall = time.perf_counter() - t
                summary = json.loads((tmp / name / "summary.json").read_text())
                stages = summary["stage_seconds"]
                total = sum(stages.values()) or 1.0
                return {"img_s": summary["images_per_s"], "img_s_wall": round(len(rows) / wall, 2),
                        # each stage's own wall time; stages of two batches overlap, so they add up to more than the scan's
                        "stage_seconds": stages, "stage_share": {k: round(v / total, 3) for k, v in stages.items()},
                        "options": {k: summary.get("options", {}).get(k) for k in ("verify", "ocr", "backend", "looks")},
                        "decisions": _tier_decisions(tmp / name / "results.jsonl", bench / "truth.csv"),
                        "command": " ".join(cmd[1:])}

            # once: the first scan on a machine that has just built the index (`index build` caches the references'
            # keypoints), and the first scan with an empty cache (an index built elsewhere)
            once = [("after_built", sys.executable, tmp / "built-index", [], built_cache), ("after_cold", sys.executable, index, [], cache)]
            # every round, alternated with SIFT + RANSAC (a shared machine's speed drifts: medians of the rounds)
            each = [("after", sys.executable, index, [], cache)]
            if before:
                each.append(("before", before, before_index or index, [], cache))
            if torch_too:
                each.append(("after_torch", sys.executable, index, ["--backend", "torch"], cache))
            sift_rates, rates = [], {name: [] for name, *_ in each}
            for name, *args in once:
                out[name] = scan(name, *args)
            for _ in range(rounds):
                t = time.perf_counter()
                sift_scan(manifest, bench / "gallery", tmp / "sift")
                sift_rates.append(len(rows) / (time.perf_counter() - t))
                for name, *args in each:
                    out[name] = scan(name, *args)
                    rates[name].append(out[name]["img_s"])
            out["sift_img_s"] = round(statistics.median(sift_rates), 2)
            out["sift_img_s_rounds"] = [round(r, 2) for r in sift_rates]
            for name, *_ in once:
                out[name]["x_sift"] = round(out[name]["img_s"] / out["sift_img_s"], 2)
            for name, *_ in each:
                out[name]["img_s_rounds"] = rates[name]
                out[name]["img_s"] = round(statistics.median(rates[name]), 2)
                out[name]["x_sift_rounds"] = [round(a / b, 2) for a, b in zip(rates[name], sift_rates)]
                out[name]["x_sift"] = round(statistics.median(out[name]["x_sift_rounds"]), 2)
            base = (tmp / "after" / "results.jsonl").read_bytes().splitlines()
            for name, *_ in once + each:
                if name != "after":
                    other = (tmp / name / "results.jsonl").read_bytes().splitlines()
                    out[name]["rows_identical_to_after"] = sum(a == b for a, b in zip(base, other))
        finally:
            manifest.unlink(missing_ok=True)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model and dumps, for the test suite")
    ap.add_argument("--images", type=int, help="photos per end-to-end scan (default 96, two scans; quick 32, one)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1, help="decode workers of the scan")
    ap.add_argument("--memory-rows", type=int, nargs=2, help="small and large dump for the memory check (default 1000 100000)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--vs-sift", metavar="BENCH", help="a real-photo bench folder: the scan at its defaults against SIFT + RANSAC")
    ap.add_argument("--index", help="with --vs-sift: the index of the bench's gallery (built by the model scanned with)")
    ap.add_argument("--before", metavar="PYTHON", help="with --vs-sift: also scan with this interpreter (another checkout)")
    ap.add_argument("--before-index", help="with --before: the index that checkout's model built (default: --index)")
    ap.add_argument("--torch", action="store_true", help="with --vs-sift: also scan with --backend torch (the same code and model)")
    ap.add_argument("--every", type=int, default=4, help="with --vs-sift: every N-th listing (default 4)")
    ap.add_argument("--rounds", type=int, default=1, help="with --vs-sift: SIFT + RANSAC and the warm scans this many times, "
                    "alternated; medians reported (default 1)")
    args = ap.parse_args(argv)
    if args.vs_sift:
        if not args.index:
            raise SystemExit("--vs-sift needs --index INDEX (markguard index build BENCH/gallery -o INDEX)")
        result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                  "load_before": os.getloadavg()[0],
                  "command": " ".join(["python", "benchmarks/bench_scan.py", *(argv if argv is not None else sys.argv[1:])])}
        result["vs_sift"] = vs_sift(Path(args.vs_sift), Path(args.index), every=args.every, workers=args.workers, before=args.before,
                                    before_index=Path(args.before_index) if args.before_index else None, torch_too=args.torch,
                                    rounds=args.rounds)
        result["load_after"] = os.getloadavg()[0]
        print(json.dumps(result, indent=2))
        return result

    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "command": " ".join(["python", "benchmarks/bench_scan.py", *(argv if argv is not None else sys.argv[1:])])}
    with tempfile.TemporaryDirectory(prefix="bench-scan-setup-") as tmp:
        root = Path(tmp)
        if not args.skip_throughput:
            if args.quick:
                big = make_setup(root / "tp", backbone="test_resnet", scan_size=64, photos=8, photo_size=(320, 240), output_stride=32)
            else:
                big = make_setup(root / "tp", backbone="resnet18", scan_size=320, photos=64, photo_size=(480, 360))
            result["throughput"] = throughput(big, images=args.images or (32 if args.quick else 96), batch_size=args.batch_size,
                                              workers=args.workers, regions=None, rounds=1 if args.quick else 2)
            result["throughput"]["model"] = "timm test_resnet @ 64 px" if args.quick else "resnet18 @ 320 px (random weights), grid regions"
        if not args.skip_memory:
            # timm's smallest test network: the pipeline around the model, not the model, must stay flat
            tiny = make_setup(root / "mem", backbone="test_resnet", scan_size=64, photos=8, photo_size=(160, 120), output_stride=32)
            small, large = args.memory_rows or ((50, 200) if args.quick else (1000, 100_000))
            a = memory(tiny, small, batch_size=64, workers=args.workers)
            b = memory(tiny, large, batch_size=64, workers=args.workers)
            result["memory"] = {"small": a, "large": b, "model": "timm test_resnet @ 64 px, --regions none",
                                "main_growth": round(b["main_peak_rss_mb"] / a["main_peak_rss_mb"] - 1, 3),
                                "worker_growth": round(b["worker_peak_rss_mb"] / a["worker_peak_rss_mb"] - 1, 3)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
