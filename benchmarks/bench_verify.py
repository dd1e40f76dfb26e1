"""Verification's cost a check, by crop size: marks pasted into large photos, each region checked against its own
reference (as registered, mirrored, inverted: ``infer/verify.py reference_variants``), as the scan's gate checks them.

For each ``crop_max`` (the long side a region's crop is shrunk to before keypoint detection) it
prints the median milliseconds a check over ``--repeats`` rounds, and how many of the marks verified,
so that a smaller crop is only taken where it verifies as many. One process, the threads OpenCV is
given (``OMP_NUM_THREADS`` / ``cv2.setNumThreads``, 1 by default here).

    python benchmarks/bench_verify.py --marks 8 --crop-max 640 400 320
    python benchmarks/bench_verify.py --quick          # two marks, one size: for the tests
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--marks", type=int, default=8, help="generated marks (brands x 1), each pasted at every --scales")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.15, 0.35, 0.6], help="mark size, share of the photo's short side")
    ap.add_argument("--photo", type=int, nargs=2, default=[1280, 960], metavar=("W", "H"), help="photo size (the scan keeps photos at up to 1280 px)")
    ap.add_argument("--crop-max", type=int, nargs="+", default=[640, 400, 320])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.marks, args.scales, args.crop_max, args.repeats = 2, [0.3], [400], 1

    import cv2

    from markguard.datasets.synth import make_marks, paste_mark, procedural_background, write_gallery
    from markguard.infer import verify

    cv2.setNumThreads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        marks = make_marks(args.marks, 2, seed=11)[: args.marks * 2]
        gallery = write_gallery(marks, Path(tmp) / "gallery")
        rng = np.random.default_rng(5)
        cases = []
        for m in marks[: args.marks]:
            for scale in args.scales:
                img = procedural_background(*args.photo, rng)
                box = paste_mark(img, m.image, rng, scale=scale, strength=0.4)
                cases.append((np.asarray(img.convert("RGB")), box, str(gallery / m.brand / f"{m.mark}.png")))
        for _, _, src in cases:
            verify.reference_variants(src)  # references are cached per file in a scan: not part of a check's cost
        print(f"# bench_verify  {platform.processor() or platform.machine()}  {time.strftime('%Y-%m-%d %H:%M')}  "
              f"{len(cases)} marks at {args.scales} of a {args.photo[0]}x{args.photo[1]} photo, OpenCV {cv2.__version__}, "
              f"{args.threads} thread(s)")
        print("| crop_max (px) | ms a check (median of rounds) | verified |")
        print("|---:|---:|---:|")
        for crop_max in args.crop_max:
            cfg = dataclasses.replace(verify.VerifyConfig(), crop_max=crop_max)
            rounds, verified = [], 0
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                verified = sum(verify.verify_region(img, box, verify.reference_variants(src, cfg), cfg).verified
                               for img, box, src in cases)
                rounds.append((time.perf_counter() - t0) / len(cases))
            print(f"| {crop_max} | {1000 * statistics.median(rounds):.1f} | {verified} of {len(cases)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
