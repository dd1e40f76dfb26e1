"""`markguard data ...` (import marks, check a training set) and `markguard gallery check`."""

from __future__ import annotations

import argparse
import tempfile

from markguard.commands.args import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="import reference marks and check training sets", description="Import reference marks and check training sets.")
    sub = data.add_subparsers(dest="data_command", metavar="{simple-icons,icons,wordmarks,check-trainset,devicon,photos,realbench}", required=True)

    p = sub.add_parser(
        "icons",
        help="write a colourful icon set (emoji, flags) as a training gallery, one design a class",
        description="Render every icon of an npm icon set (twemoji, flags) to OUT/<prefix>-<icon>/<icon>.png.",
    )
    p.add_argument("--set", required=True, dest="iconset", metavar="NAME", help="twemoji or flags")
    p.add_argument("--out", required=True, metavar="DIR", help="gallery folder to write")
    p.add_argument("--archive", metavar="TGZ", help="the package's .tgz from npm pack (default: fetch it with npm pack)")
    p.add_argument("--size", type=positive_int, default=128, metavar="PX", help="render size in pixels (default 128)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="import only the first N icons")
    p.set_defaults(func=run_icons)

    p = sub.add_parser(
        "simple-icons",
        help="write the simple-icons package (CC0 brand icons) as a gallery",
        description="Render every icon of the simple-icons npm package to OUT/<slug>/<slug>-<variant>.png and add names to OUT/brands.yaml.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="gallery folder to write (created; existing brands.yaml entries are kept)")
    p.add_argument("--package", metavar="PATH", help="an unpacked simple-icons package folder (default: fetch it with npm pack)")
    p.add_argument("--version", metavar="V", help="package version to fetch with npm (default: latest); ignored with --package")
    p.add_argument("--limit", type=positive_int, metavar="N", help="import only the first N icons")
    p.add_argument("--only", metavar="SLUGS", help="comma-separated icon slugs to import, e.g. github,nike")
    p.add_argument("--size", type=positive_int, default=256, metavar="PX", help="render size in pixels (default 256)")
    p.add_argument("--variants", default="color,black", metavar="LIST", help="comma-separated: color, black, white-on-color, white (default color,black)")
    p.set_defaults(func=run_simple_icons)

    p = sub.add_parser(
        "wordmarks",
        help="render brand names as wordmark images in this machine's fonts",
        description="Write OUT/<brand>/<brand>-wm-<font>.png for every brand name and font found under /usr/share/fonts.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--names", metavar="FILE", help="text file, one brand name a line, optionally ending in a colour: 'Acme Corp #E4002B'")
    src.add_argument("--from-gallery", metavar="DIR", help="use the brands (ids and names) of this gallery")
    p.add_argument("--out", required=True, metavar="DIR", help="gallery folder to write (may be the --from-gallery folder)")
    p.add_argument("--size", type=positive_int, default=96, metavar="PX", help="font size in pixels (default 96)")
    p.add_argument("--color", metavar="#RRGGBB", help="text colour for names without one (default black)")
    p.add_argument("--max-fonts", type=positive_int, metavar="N", help="use only the first N fonts found (sorted by path)")
    p.add_argument("--fonts-per-brand", type=positive_int, metavar="K", help="draw each brand in K of the fonts, chosen per brand: many typefaces, fewer images")
    p.set_defaults(func=run_wordmarks)

    p = sub.add_parser(
        "check-trainset",
        help="read a training set and print samples per label and what was skipped",
        description="Read a training set once (any supported layout) and print counts per label and split, and every skipped image with its reason.",
    )
    p.add_argument("path", metavar="PATH", help="the training set's folder, or a .csv/.jsonl manifest")
    p.add_argument("--format", default="auto", help="auto (default), imagefolder, manifest, logodet3k, flickrlogos32, openlogo, sop, products10k")
    p.add_argument("--top", type=positive_int, default=20, metavar="N", help="labels to list, most samples first (default 20)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad image or annotation instead of skipping it")
    p.set_defaults(func=run_check_trainset)

    from markguard.commands._realbench import register_data

    register_data(sub)  # devicon, photos, realbench: the real-photo benchmark
    from markguard.commands._productbench import register_productbench

    register_productbench(sub)  # productbench: catalogue photos and their edited copies

    gallery = subparsers.add_parser("gallery", help="check a brand gallery before indexing it", description="Check a brand gallery before indexing it.")
    gsub = gallery.add_subparsers(dest="gallery_command", metavar="{check}", required=True)
    p = gsub.add_parser(
        "check",
        help="report unreadable files, empty brands, one picture under two brands, tiny marks",
        description="Read every mark once; exit 1 when something would make the index wrong.",
    )
    p.add_argument("gallery", metavar="GALLERY", help="gallery folder: <brand>/<mark>.png|jpg|webp|svg and optional brands.yaml")
    p.add_argument("--min-similarity", type=float, default=None, metavar="S", help="thumbnail correlation from which two marks of different brands count as the same picture (default 0.95)")
    p.set_defaults(func=run_gallery_check)


def run_simple_icons(args: argparse.Namespace) -> int:
    from markguard.datasets.simple_icons import fetch_simple_icons, import_simple_icons

    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        package = args.package or fetch_simple_icons(tmp, version=args.version)
        result = import_simple_icons(package, args.out, limit=args.limit, size=args.size, variants=variants, only=only, progress=True)
    for slug, reason in result.skipped:
        print(f"skipped {slug}: {reason}")
    print(f"{result.out_dir}: {len(result.brands)} brands, {len(result.files)} images from simple-icons {result.version or '(unknown version)'}; {len(result.skipped)} skipped")
    return 0


def run_icons(args: argparse.Namespace) -> int:
    from markguard.datasets.iconsets import ICON_SETS, import_iconset

    result = import_iconset(args.iconset, args.out, archive=args.archive, size=args.size, limit=args.limit)
    for icon, reason in result.skipped:
        print(f"skipped {icon}: {reason}")
    s = ICON_SETS[args.iconset]
    print(f"{result.out_dir}: {len(result.written)} icons from {s.package} {s.version} ({s.licence}); {len(result.skipped)} skipped")
    return 0


def run_wordmarks(args: argparse.Namespace) -> int:
    from markguard.datasets.registry import load_gallery, merge_brand_names
    from markguard.datasets.wordmarks import find_fonts, read_names, render_wordmarks

    if args.names:
        names = read_names(args.names)
    else:
        names = {b.id: b.name for b in load_gallery(args.from_gallery).brands.values()}
    fonts = find_fonts()
    if args.max_fonts:
        fonts = fonts[: args.max_fonts]
    run = render_wordmarks(names, args.out, fonts=fonts or None, size=args.size, color=args.color, fonts_per_brand=args.fonts_per_brand)
    merge_brand_names(args.out, {b: (v if isinstance(v, str) else v[0]) for b, v in names.items()})
    for name, font, reason in run.skipped:
        print(f"skipped {name!r} in {font}: {reason}")
    print(f"{run.out_dir}: {len(run.written)} wordmarks of {len(names)} brands in {len(fonts) or 1} font(s); {len(run.skipped)} skipped")
    return 0


def run_check_trainset(args: argparse.Namespace) -> int:
    from markguard.datasets.trainsets import open_trainset, summarize

    summary = summarize(open_trainset(args.path, args.format, strict=args.strict), progress=True)
    print("\n".join(summary.lines(top=args.top)))
    return 0 if summary.samples else 1


def run_gallery_check(args: argparse.Namespace) -> int:
    import math

    from markguard.datasets.registry import SAME_PICTURE, check_gallery
    from markguard.errors import MarkguardError

    s = args.min_similarity
    if s is not None and not (math.isfinite(s) and 0 < s <= 1):
        raise MarkguardError(f"--min-similarity {s} must lie in (0, 1]: the thumbnail correlation above which two marks count as one picture")
    report = check_gallery(args.gallery, min_similarity=SAME_PICTURE if s is None else s)
    if not report.marks and not report.errors:  # as `index build` fails on it
        raise MarkguardError(f"{args.gallery}: gallery has no mark images; add <brand_id>/<mark_id>.png|jpg|webp|svg files")
    print("\n".join(report.lines()))
    return 0 if report.ok else 1
