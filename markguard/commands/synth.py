"""`markguard synth`: a synthetic gallery and listing dump with ground truth."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic gallery, listing dump and truth.jsonl",
                       description="Generate marks (shapes and wordmarks), a gallery of them, and listing photos with marks pasted in.")
    p.add_argument("--out", "-o", required=True, help="output folder (gallery/, listings/, truth.jsonl)")
    p.add_argument("--brands", type=int, default=12, help="registered brands (default 12)")
    p.add_argument("--marks-per-brand", type=int, default=2, help="marks per brand: a logo, a wordmark, more logos (default 2)")
    p.add_argument("--distractors", type=int, default=6, help="brands not in the gallery, pasted as distractors (default 6)")
    p.add_argument("--listings", type=int, default=200, help="listing photos (default 200)")
    p.add_argument("--backgrounds", help="a folder of photos to paste marks into (default: procedural backgrounds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes drawing listings (default: one per CPU, at most 8); same output for any number")
    p.set_defaults(func=run)


def run(args) -> int:
    import os

    from markguard.datasets.synth import check_synth_args, synth_dataset
    from markguard.errors import MarkguardError

    if args.workers is not None and args.workers < 0:
        raise MarkguardError("--workers must be 0 (this process) or more")
    check_synth_args(args.out, brands=args.brands, marks_per_brand=args.marks_per_brand, listings=args.listings,
                     distractors=args.distractors)
    workers = min(8, os.cpu_count() or 1) if args.workers is None else args.workers
    paths = synth_dataset(args.out, brands=args.brands, marks_per_brand=args.marks_per_brand, distractor_brands=args.distractors,
                          listings=args.listings, seed=args.seed, backgrounds=args.backgrounds, workers=workers)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0
