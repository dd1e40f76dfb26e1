"""`markguard data productbench`: catalogue photos and listings made from them by sellers' edits (``datasets/productbench``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from markguard.commands.args import positive_int


def register_productbench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("productbench", help="build the product bench: catalogue photos, their edited copies and distractors",
                       description="Fetch the bench's photos (Debian opencv-doc and lomiri-wallpapers-20.04, scikit-image's stereo pair: "
                                   "none of them in the product model's training) and write catalogue/, listings/<edit>/ and truth.jsonl.")
    p.add_argument("--out", "-o", required=True, help="bench folder to write")
    p.add_argument("--photos", metavar="DIR", help="the bench's photos, already fetched (default: fetch them into OUT/photos)")
    p.add_argument("--deb", action="append", default=[], metavar="PKG=PATH", help="a package's .deb or unpacked folder instead of apt-get download")
    p.add_argument("--catalogue", type=positive_int, default=26, help="catalogue photos (default 26)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_productbench)


def run_productbench(args: argparse.Namespace) -> int:
    from markguard.datasets.productbench import ProductBenchConfig, build_productbench, fetch_bench_photos
    from markguard.errors import MarkguardError

    debs = {}
    for item in args.deb:
        if "=" not in item:
            raise MarkguardError(f"--deb {item}: give PKG=PATH (a .deb or an unpacked folder)")
        k, v = item.split("=", 1)
        debs[k] = v
    photos = Path(args.photos) if args.photos else Path(args.out) / "photos"
    if not args.photos:
        fetch_bench_photos(photos, debs=debs)
    elif not photos.is_dir():
        raise MarkguardError(f"--photos {photos}: not a folder; leave --photos out to fetch the bench's photos")
    info = build_productbench(photos, args.out, ProductBenchConfig(catalogue=args.catalogue, seed=args.seed))
    print(f"{args.out}: {info['catalogue']} catalogue photos; {info['listings']} listings "
          f"({info['copies']} copies, {info['distractors']} distractors, {info['near_duplicates']} near-duplicates) over {len(info['edits'])} edits")
    return 0
