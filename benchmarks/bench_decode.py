"""How much JPEG draft decoding buys: listing photos decoded to a model-sized image, with and without draft.

Both paths produce the same thing, an RGB image whose short side is ``--target``:

* full:  decode_image(jpeg) at full size, then resize;
* draft: decode_image(jpeg, target_size=target), where libjpeg scales by 1/2..1/8 while
  decoding, then resize the (much smaller) result.

The photos are generated in memory (gradients, soft blobs and sensor-like noise, JPEG
quality 90), so file I/O is not measured. One process, one thread.

    python benchmarks/bench_decode.py            # 200 photos of 1600x1200, 3 runs
    python benchmarks/bench_decode.py --quick    # a few small photos, for the test suite
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time

import numpy as np
from PIL import Image

from markguard.datasets.decode import decode_image


def make_photos(n: int, size: tuple[int, int], quality: int, seed: int = 0) -> list[bytes]:
    """``n`` photo-like JPEGs: smooth structure plus noise, so they compress like real photos, not like flat colour."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    photos = []
    for _ in range(n):
        img = np.empty((h, w, 3), np.float32)
        for c in range(3):
            gx, gy = rng.uniform(-0.1, 0.1, 2)
            img[..., c] = 128 + gx * (xx - w / 2) + gy * (yy - h / 2)
        for _ in range(6):  # soft blobs: objects on a background
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(h / 10, h / 3)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
            img += blob[..., None] * rng.uniform(-90, 90, 3)
        img += rng.normal(0, 6, img.shape)  # sensor noise
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
        photos.append(buf.getvalue())
    return photos


def to_target(img: Image.Image, target: int) -> Image.Image:
    scale = target / min(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR)


def run(photos: list[bytes], target: int, draft: bool) -> float:
    """Images per second for one pass over ``photos``."""
    start = time.perf_counter()
    for data in photos:
        decoded = decode_image(data, target_size=target if draft else None)
        out = to_target(decoded.image, target)
        assert min(out.size) == target
    return len(photos) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--n", type=int, default=200, help="photos per run")
    p.add_argument("--runs", type=int, default=3, help="runs per mode; the median is reported")
    p.add_argument("--size", default="1600x1200", help="photo size, WxH")
    p.add_argument("--target", type=int, default=224, help="short side of the decoded image")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--quick", action="store_true", help="4 photos of 320x240, 1 run: checks the script works")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.runs, args.size = 4, 1, "320x240"
    w, h = (int(v) for v in args.size.lower().split("x"))

    photos = make_photos(args.n, (w, h), args.quality)
    mean_kb = sum(map(len, photos)) / len(photos) / 1024
    run(photos[:2], args.target, draft=True)  # warm-up: first-call costs (plugin imports, allocator)
    rates = {mode: [run(photos, args.target, draft=mode == "draft") for _ in range(args.runs)] for mode in ("full", "draft")}
    full, draft = statistics.median(rates["full"]), statistics.median(rates["draft"])

    print(f"python {platform.python_version()}, Pillow {Image.__version__}, {platform.machine()}")
    print(f"{args.n} JPEGs {w}x{h} q{args.quality} (mean {mean_kb:.0f} KiB) -> short side {args.target}, median of {args.runs} run(s)")
    print("| mode | images/s (median) | runs |")
    print("|---|---|---|")
    for mode, med in (("full decode + resize", full), ("draft decode + resize", draft)):
        runs = rates["full" if mode.startswith("full") else "draft"]
        print(f"| {mode} | {med:.1f} | {', '.join(f'{r:.1f}' for r in runs)} |")
    print(f"draft speed-up: {draft / full:.2f}x")


if __name__ == "__main__":
    main()
