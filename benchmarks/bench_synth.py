"""How fast `markguard synth` writes labelled listing photos: images/s with 0, 1 and N worker processes.

Each run is ``synth_dataset`` end to end, as the command runs it: marks drawn, listings composed
(procedural backgrounds, marks pasted with perspective, bending, shading, blur; near-matches,
distractors, photos without a mark), JPEG-encoded and written with their truth rows. The gallery
is written first and not timed. Every run writes the same bytes for the same seed, whatever the
number of workers (a test checks it); this script checks the truth files agree too.

    python benchmarks/bench_synth.py                 # 400 listings of 480x360, workers 0,1,2, 3 runs
    python benchmarks/bench_synth.py --quick         # 12 small listings, 1 run: checks the script works
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from markguard.datasets.synth import SynthConfig, make_marks, synth_dataset


def run(n: int, workers: int, size: tuple[int, int], root: Path) -> tuple[float, str]:
    """Listings per second for one ``synth_dataset`` call, minus the gallery; and its truth.jsonl."""
    cfg = SynthConfig(size=size)
    start = time.perf_counter()
    paths = synth_dataset(root, brands=12, listings=n, seed=0, cfg=cfg, workers=workers)
    took = time.perf_counter() - start
    # the gallery (24 marks) is part of the call: time it alone and take it off
    g0 = time.perf_counter()
    make_marks(12, 2, seed=0)
    make_marks(6, 1, seed=10_000, prefix="other")
    gallery = time.perf_counter() - g0
    return n / max(1e-9, took - gallery), paths["truth"].read_text()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--n", type=int, default=400, help="listings per run")
    p.add_argument("--runs", type=int, default=3, help="runs per setting; the median is reported")
    p.add_argument("--size", default="480x360", help="listing photo size, WxH (the synth default)")
    p.add_argument("--workers", default=None, help="comma-separated worker counts (default 0,1,<cpus>)")
    p.add_argument("--quick", action="store_true", help="12 listings of 160x120, 1 run: checks the script works")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.runs, args.size = 12, 1, "160x120"
    w, h = (int(v) for v in args.size.lower().split("x"))
    cpus = os.cpu_count() or 1
    counts = [int(v) for v in args.workers.split(",")] if args.workers else sorted({0, 1, cpus})
    if args.quick:
        counts = [0, 2]

    rates: dict[int, list[float]] = {}
    truths = set()
    with tempfile.TemporaryDirectory(prefix="markguard-bench-synth-") as tmp:
        run(4, 0, (w, h), Path(tmp) / "warm")  # first-call costs: fonts, noise bank, imports
        for r in range(args.runs):
            for k in counts:
                rate, truth = run(args.n, k, (w, h), Path(tmp) / f"w{k}-r{r}")
                rates.setdefault(k, []).append(rate)
                truths.add(truth)
    assert len(truths) == 1, "synth output differs between worker counts"

    print(f"python {platform.python_version()}, {platform.machine()}, {cpus} CPUs")
    print(f"{args.n} listings of {w}x{h} per run, median of {args.runs} run(s); output identical across settings")
    print("| workers | listings/s (median) | runs |")
    print("|---|---|---|")
    for k in counts:
        label = f"{k} (in process)" if k == 0 else str(k)
        print(f"| {label} | {statistics.median(rates[k]):.1f} | {', '.join(f'{v:.1f}' for v in rates[k])} |")


if __name__ == "__main__":
    main()
