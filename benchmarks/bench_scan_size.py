"""Peak memory of a scan by the model card's scan_size: why card.py caps it at 1024.

Each size runs in its own process (so each peak is its own): a randomly initialised resnet10t whose
card has that scan_size, a one-mark index, and a scan of 8 photos of 192x144 in one batch of 8
(the shape of the issue's report: a card with scan_size 4096 made this allocate 22 GB).

    python benchmarks/bench_scan_size.py                 # 320 and 1024 (what benchmarks/results/scan_size.md records)
    python benchmarks/bench_scan_size.py --sizes 2048    # more sizes; mind the memory
    python benchmarks/bench_scan_size.py --quick         # 64 and 128, for the test suite
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(size: int, root: Path) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from markguard.checkpoint import ModelCard, create_model, save_checkpoint
    from markguard.infer.build import build_index
    from markguard.infer.scan import ScanOptions, run_scan

    torch.manual_seed(0)
    card = ModelCard(backbone="resnet10t", dim=32, input_size=48, scan_size=size,
                     regions={"mode": "grid", "scales": [1.0, 0.5], "overlap": 0.0})
    save_checkpoint(create_model(card), card, root / "model")
    mark = np.full((96, 96, 3), 255, np.uint8)
    mark[20:76, 20:76] = (200, 0, 0)
    (root / "gallery" / "acme").mkdir(parents=True)
    Image.fromarray(mark).save(root / "gallery" / "acme" / "logo.png")
    rng = np.random.default_rng(0)
    (root / "dump").mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (144, 192, 3), dtype=np.uint8)).save(root / "dump" / f"p{i}.jpg")
    build_index(root / "gallery", root / "idx", model=root / "model", device="cpu")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    t = time.perf_counter()
    run_scan(root / "dump", [root / "idx"], root / "out", opts=ScanOptions(batch_size=8, workers=0, device="cpu"), progress=False)
    return {"scan_size": size, "peak_rss_mb_before_scan": before, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "scan_s": round(time.perf_counter() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 1024])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory(prefix="markguard-scan-size-") as tmp:
            print(json.dumps(one(args.one, Path(tmp))))
        return
    for size in [64, 128] if args.quick else args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(size)], capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
