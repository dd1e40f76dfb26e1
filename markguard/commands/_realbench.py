"""`markguard data devicon|photos|realbench`: fetch the real-photo benchmark's sources and build it (``datasets/realbench``)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from markguard.commands.args import positive_int


def register_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devicon", help="fetch the devicon package (MIT colour logos): the real-photo benchmark's marks",
                       description="Unpack the devicon npm package to OUT/package (npm pack, or a local .tgz with --archive).")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--archive", metavar="TGZ", help="a local devicon-<version>.tgz instead of fetching with npm")
    p.add_argument("--version", metavar="V", help="package version to fetch with npm (default: latest)")
    p.set_defaults(func=run_devicon)

    p = sub.add_parser("photos", help="copy the photographs of Debian photo/wallpaper packages into a folder",
                       description="Write OUT/<package>/<photo> for each package (apt-get download + dpkg -x, or a local .deb/folder with --deb).")
    p.add_argument("--debian", nargs="*", default=[], metavar="PKG", help="packages to download, e.g. lomiri-wallpapers-20.04 opencv-doc")
    p.add_argument("--deb", action="append", default=[], metavar="PKG=PATH", help="a package's local .deb or unpacked folder; repeatable")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=run_photos)

    p = sub.add_parser("realbench", help="build the real-photo benchmark: devicon marks pasted into real photos, in tiers",
                       description="Write OUT/gallery, OUT/listings (+ manifest.csv), OUT/truth.csv and OUT/bench.json; "
                                   "tiers copy, small, near, cross, unregistered, none, large; marks from 5%% to 95%% of the short side, their size bands in truth.csv.")
    p.add_argument("--marks", required=True, metavar="DEVICON", help="the unpacked devicon package folder, or its .tgz")
    p.add_argument("--cross", metavar="SIMPLE_ICONS", help="the unpacked simple-icons package folder, or its .tgz (the cross tier)")
    p.add_argument("--photos", required=True, nargs="+", metavar="DIR", help="folders of photographs (from `markguard data photos`)")
    p.add_argument("--out", required=True, metavar="DIR", help="new folder to write")
    p.add_argument("--brands", type=positive_int, default=300, help="registered brands (default 300)")
    p.add_argument("--listings", type=positive_int, default=1950, help="listing photos over all tiers (default 1950: copy, near and none 300 each, small, cross and unregistered 250, large 300)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_realbench)

    p = sub.add_parser("wordbench", help="add the wordmark tier to a real-photo bench: brand names re-typeset on real photos",
                       description="Copy BENCH to OUT and add registered wordmarks (brand names in one font) to its gallery and "
                                   "listings showing them re-typeset in other fonts (wordmark, wordmark-swap), beside unrelated "
                                   "words and unregistered brands' names (word-none, word-unregistered); datasets/wordbench.py.")
    p.add_argument("--bench", required=True, metavar="BENCH", help="a bench from `markguard data realbench`")
    p.add_argument("--photos", required=True, nargs="+", metavar="DIR", help="folders of photographs (the bench's own)")
    p.add_argument("--out", required=True, metavar="DIR", help="new folder to write")
    p.add_argument("--brands", type=positive_int, default=60, help="registered brands given a wordmark (default 60)")
    p.add_argument("--per-tier", type=positive_int, default=120, help="listings of each positive tier (negatives: half; default 120)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_wordbench)


def run_wordbench(args: argparse.Namespace) -> int:
    from markguard.datasets.wordbench import WordConfig, build_wordbench

    n = args.per_tier
    info = build_wordbench(args.bench, args.photos, args.out, progress=True,
                           cfg=WordConfig(brands=args.brands, wordmark=n, swap=n, unregistered=max(1, n // 2), none=max(1, n // 2),
                                          seed=args.seed))
    tiers = ", ".join(f"{t} {n}" for t, n in info["listings_per_tier"].items())
    print(f"{args.out}: {len(info['wordmarks']['brands'])} registered wordmarks in {info['wordmarks']['gallery_font']}, "
          f"listings in {len(info['wordmarks']['listing_fonts'])} other fonts; listings: {tiers}")
    return 0


def run_devicon(args: argparse.Namespace) -> int:
    from markguard.datasets.realbench import fetch_npm, package_version, read_devicon

    package = fetch_npm("devicon", args.out, version=args.version, archive=args.archive)
    print(f"{package}: devicon {package_version(package) or '(unknown version)'}, {len(read_devicon(package))} brands with original artwork")
    return 0


def run_photos(args: argparse.Namespace) -> int:
    from markguard.datasets.realbench import fetch_photos
    from markguard.errors import MarkguardError

    debs = {}
    for item in args.deb:
        pkg, sep, path = item.partition("=")
        if not sep or not pkg or not path:
            raise MarkguardError(f"--deb {item!r} must look like PKG=PATH, e.g. opencv-doc=opencv-doc_4.6.0+dfsg-12_all.deb")
        debs[pkg] = path
    if not args.debian and not debs:
        raise MarkguardError("name packages with --debian PKG... or --deb PKG=PATH")
    from markguard.datasets.realbench import TRAINING_DEBIAN

    for pkg in dict.fromkeys([*args.debian, *debs]):
        if pkg in TRAINING_DEBIAN:
            print(f"warning: the default model trains on {pkg}'s photos; a benchmark of them is not one of unseen photos")
    result = fetch_photos(args.debian, args.out, debs=debs)
    for name, reason in result.skipped:
        print(f"left out {name}: {reason}")
    print(f"{result.out_dir}: {len(result.written)} photos; {len(result.skipped)} images left out")
    return 0


def run_realbench(args: argparse.Namespace) -> int:
    from markguard.datasets.realbench import BenchConfig, build_realbench

    with tempfile.TemporaryDirectory() as tmp:
        marks = _package_dir(args.marks, Path(tmp) / "marks", "devicon")
        cross = _package_dir(args.cross, Path(tmp) / "cross", "simple-icons") if args.cross else None
        info = build_realbench(marks, args.photos, args.out, cross_dir=cross, progress=True,
                               cfg=BenchConfig(brands=args.brands, listings=args.listings, seed=args.seed))
    tiers = ", ".join(f"{t} {n}" for t, n in info["listings_per_tier"].items())
    print(f"{args.out}: {len(info['gallery_brands'])} registered brands, {len(info['unregistered_brands'])} unregistered, "
          f"{len(info['sources']['photos'])} photos; listings: {tiers}")
    return 0


def _package_dir(path: str, tmp: Path, name: str) -> Path:
    """An npm package folder given as itself or as its .tgz (unpacked into ``tmp``)."""
    from markguard.datasets.realbench import fetch_npm

    p = Path(path)
    return fetch_npm(name, tmp, archive=p) if p.is_file() else (p / "package" if (p / "package").is_dir() else p)
