"""What a product index costs a logo scan: the same dump scanned with the logo index alone and with a product index beside it.

    python benchmarks/bench_product_scan.py --work runs/product-scan --runs 2

Builds (once, under ``--work``) a dump of the first ``--n`` listing photos of the real-photo bench, a logo index of its
first ``--brands`` gallery brands (the shipped logo model) and a product index of the product bench's catalogue
(``--model``, default the shipped product model), then runs, alternating, ``--runs`` times each:

    OMP_NUM_THREADS=1 markguard scan DUMP -i logos -o OUT --quiet --workers 1
    OMP_NUM_THREADS=1 markguard scan DUMP -i logos -i products -o OUT --quiet --workers 1

and reports images/s and each stage's seconds from the scans' ``summary.json``. The machine is shared: alternate runs
and read the spread; the cost is ``1 - (logos + products) / logos`` in images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str], env=None) -> None:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")


def prepare(args) -> tuple[Path, Path, Path]:
    work = Path(args.work)
    dump, logos, products = work / "dump", work / "logos", work / "products"
    if not dump.is_dir():
        photos = sorted(Path(args.listings).glob("*.jpg"))[: args.n]
        if len(photos) < args.n:
            raise SystemExit(f"{args.listings}: {len(photos)} listing photos, {args.n} asked; build it with `markguard data realbench`")
        dump.mkdir(parents=True)
        for p in photos:
            shutil.copyfile(p, dump / p.name)  # copies: a dump's links out of its root are refused
    if not (logos / "markguard.json").is_file():
        gallery = work / "gallery"
        if not gallery.is_dir():
            for b in sorted(d for d in Path(args.gallery).iterdir() if d.is_dir())[: args.brands]:
                shutil.copytree(b, gallery / b.name)
        run(["markguard", "index", "build", str(gallery), "--out", str(logos)])
    if not (products / "markguard.json").is_file():
        cmd = ["markguard", "index", "build", args.catalogue, "--out", str(products), "--model", args.model]
        if args.bank_photos:
            cmd += ["--bank", "8", "--bank-photos", args.bank_photos]
        run(cmd)
    return dump, logos, products


def scan(dump: Path, indexes: list[Path], out: Path, threads: int) -> dict:
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = ["markguard", "scan", str(dump), *[a for i in indexes for a in ("-i", str(i))], "-o", str(out), "--quiet", "--workers", "1"]
    t = time.time()
    run(cmd, env)
    s = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    s["wall"] = time.time() - t
    return s


def quick_inputs(work: Path) -> tuple[str, str, str]:
    """``--quick``: 4 procedural listing photos, 2 procedural marks, 2 procedural catalogue photos (the figures mean nothing)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)

    def picture(path: Path, size=(320, 240)):
        a = rng.integers(0, 255, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).resize(size, Image.BILINEAR).save(path, quality=90)

    for i in range(4):
        picture(work / "quick" / "listings" / f"l{i}.jpg")
    for i in range(2):
        picture(work / "quick" / "catalogue" / f"brand{i}" / f"shot{i}.jpg")
        mark = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
        d = ImageDraw.Draw(mark)
        if i == 0:
            d.ellipse((8, 8, 88, 88), fill=(200, 30, 30, 255), outline=(20, 20, 120, 255), width=8)
        else:  # another shape: two of one shape are one mark to the model, and the gallery check refuses them
            d.polygon([(48, 4), (92, 90), (4, 90)], fill=(20, 120, 40, 255))
            d.rectangle((30, 50, 66, 64), fill=(250, 250, 250, 255))
        (work / "quick" / "gallery" / f"brand{i}").mkdir(parents=True, exist_ok=True)
        mark.save(work / "quick" / "gallery" / f"brand{i}" / "logo.png")
    return str(work / "quick" / "listings"), str(work / "quick" / "gallery"), str(work / "quick" / "catalogue")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="runs/product-scan")
    ap.add_argument("--listings", default="data/realbench/listings")
    ap.add_argument("--gallery", default="data/realbench/gallery")
    ap.add_argument("--catalogue", default="data/product-bench/catalogue")
    ap.add_argument("--model", default="product")
    ap.add_argument("--bank-photos", help="a background bank for the product index (as bench_product's)")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--brands", type=int, default=40)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="raw summaries to write")
    ap.add_argument("--quick", action="store_true", help="a smoke run on 4 procedural photos in a temporary folder (checks the script runs)")
    args = ap.parse_args(argv)
    if args.quick:
        import tempfile

        args.work = tempfile.mkdtemp(prefix="markguard-product-scan-quick-")
        args.listings, args.gallery, args.catalogue = quick_inputs(Path(args.work))
        args.n, args.brands, args.runs, args.bank_photos = 4, 2, 1, None
    dump, logos, products = prepare(args)
    work = Path(args.work)
    rows = {"logos": [], "logos + products": []}
    for r in range(args.runs):
        rows["logos"].append(scan(dump, [logos], work / "out-logos", args.threads))
        rows["logos + products"].append(scan(dump, [logos, products], work / "out-both", args.threads))
        print(f"run {r + 1}: " + "; ".join(f"{k} {v[-1]['images_per_s']:.2f} img/s" for k, v in rows.items()), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}; {args.n} photos, {args.threads} thread(s)")
    print("| scan | " + " | ".join(f"run {i + 1}" for i in range(args.runs)) + " |")
    print("|---|" + "---:|" * args.runs)
    for k, v in rows.items():
        print(f"| {k} | " + " | ".join(f"{s['images_per_s']:.2f} img/s ({s['seconds']:.1f} s)" for s in v) + " |")
    stages = list(rows["logos"][0]["stage_seconds"])
    print("\nstage seconds (mean over runs)\n| scan | " + " | ".join(stages) + " |")
    print("|---|" + "---:|" * len(stages))
    for k, v in rows.items():
        print(f"| {k} | " + " | ".join(f"{sum(s['stage_seconds'].get(st, 0) for s in v) / len(v):.1f}" for st in stages) + " |")
    a = sum(s["images_per_s"] for s in rows["logos"]) / args.runs
    b = sum(s["images_per_s"] for s in rows["logos + products"]) / args.runs
    print(f"\ncost of the product index: {100 * (1 - b / a):.0f}% of the logo scan's speed ({a:.2f} -> {b:.2f} img/s)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
