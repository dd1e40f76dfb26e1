"""`markguard calibrate`: choose flag and review thresholds (or fit an evidence combiner) from a labelled scan of your own listings.

What it writes goes beside the scan's index (``INDEX/thresholds.json``, ``INDEX/combiner.json``), which
scans with that index then apply, or to a folder you name; never into the installed package, whose
shipped defaults are refit only by ``benchmarks/fit_defaults.py``.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="set thresholds (or fit the evidence combiner) from a labelled scan of your listings",
                       description="Re-scans the input of RESULTS_DIR with every threshold off, compares with --truth, and writes "
                                   "global and per-brand similarity thresholds to INDEX/thresholds.json beside the scan's index "
                                   "(or --out), which scans with that index apply; with --combiner, fits the evidence combiner "
                                   "instead (INDEX/combiner.json). The installed package is never written.")
    p.add_argument("results", metavar="RESULTS_DIR", help="output folder of `markguard scan` on a labelled sample of your listings")
    p.add_argument("--truth", required=True, help="truth.jsonl (listing_id, image, seller_id, marks[{brand, mark, registered}]) "
                                                  "or a .csv with columns listing_id,brand (empty brand: a clean listing)")
    p.add_argument("--model", "-m", help="checkpoint folder the scan used (default: the one its summary names, or the shipped model)")
    p.add_argument("--out", metavar="PATH", help="write the thresholds here (a folder, or a .json path) instead of beside the index")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-fpr", type=float, help="share of clean listings allowed to be flagged (default 0.01)")
    target.add_argument("--target-precision", type=float, help="share of flags that must name a brand the photo shows")
    p.add_argument("--min-positives", type=int, default=5, help="positives a brand needs for a threshold of its own")
    p.add_argument("--dry-run", action="store_true", help="print the thresholds, write nothing")
    p.add_argument("--combiner", action="store_true", help="instead fit the evidence combiner (one probability a match) on the "
                   "scan's results.jsonl and --truth; saved beside the scan's first index, where it overrides the shipped default")
    p.add_argument("--isotonic", action="store_true", help="with --combiner: follow the logistic fit by an isotonic one")
    p.add_argument("--combiner-out", help="with --combiner: write it here instead (a folder or a .json path)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from markguard.errors import MarkguardError
    from markguard.device import resolve_device
    from markguard.train.calibrate import calibrate_results

    if args.combiner:
        return run_combiner(args)
    fpr, precision = args.target_fpr, args.target_precision
    if fpr is None and precision is None:
        fpr = 0.01
    for name, v in (("--target-fpr", fpr), ("--target-precision", precision)):
        if v is not None and not 0 < v < 1:
            raise MarkguardError(f"{name} {v} must lie between 0 and 1")
    cal = calibrate_results(args.results, args.truth, args.model, target_fpr=fpr, target_precision=precision,
                            device=resolve_device(args.device), min_positives=args.min_positives, out=args.out,
                            write=not args.dry_run)
    print(json.dumps({"thresholds": cal.thresholds(), "at_flag": cal.report["at_flag"], "written": cal.report["written"],
                      "warning": cal.report["warning"]}, indent=2))
    return 0


def run_combiner(args) -> int:
    import json

    from markguard.checkpoint import load_card
    from markguard.infer.combine import calibrate_combiner

    combiner, target = calibrate_combiner(args.results, args.truth, out=args.combiner_out or args.out, isotonic=args.isotonic,
                                          write=False)
    if args.model:
        combiner.check(load_card(args.model).fingerprint, source=f"{args.results} (scanned by another model than --model)")
    path = None if args.dry_run else combiner.save(target)
    print(json.dumps({"combiner": str(path) if path else None, "features": combiner.features,
                      "weights": [round(w, 4) for w in combiner.weights], "fitted": combiner.fitted}, indent=2))
    return 0
