"""`markguard calibrate`: choose flag and review thresholds from a labelled validation scan and write them into the model card."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="set the model's thresholds from a labelled scan (target FPR or precision)",
                       description="Re-scans the input of RESULTS_DIR with every threshold off, compares with --truth, "
                                   "and writes global and per-brand thresholds into the model card.")
    p.add_argument("results", metavar="RESULTS_DIR", help="output folder of `markguard scan` on a labelled validation dump")
    p.add_argument("--truth", required=True, help="truth.jsonl (listing_id, image, seller_id, marks[{brand, mark, registered}])")
    p.add_argument("--model", "-m", required=True, help="checkpoint folder whose card receives the thresholds")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-fpr", type=float, help="share of clean listings allowed to be flagged (default 0.01)")
    target.add_argument("--target-precision", type=float, help="share of flags that must name a brand the photo shows")
    p.add_argument("--min-positives", type=int, default=5, help="positives a brand needs for a threshold of its own")
    p.add_argument("--dry-run", action="store_true", help="print the thresholds, leave the card as it is")
    p.add_argument("--combiner", action="store_true", help="instead fit the evidence combiner (one probability a match) on the "
                   "scan's results.jsonl and --truth (.jsonl, or .csv with listing_id,brand); saved beside the scan's first index")
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
                            device=resolve_device(args.device), min_positives=args.min_positives, write=not args.dry_run)
    print(json.dumps({"thresholds": cal.thresholds(), "at_flag": cal.report["at_flag"]}, indent=2))
    return 0


def run_combiner(args) -> int:
    import json

    from markguard.checkpoint import load_card
    from markguard.infer.combine import calibrate_combiner

    combiner, target = calibrate_combiner(args.results, args.truth, out=args.combiner_out, isotonic=args.isotonic, write=False)
    combiner.check(load_card(args.model).fingerprint, source=f"{args.results} (scanned by another model than --model)")
    path = None if args.dry_run else combiner.save(target)
    print(json.dumps({"combiner": str(path) if path else None, "features": combiner.features,
                      "weights": [round(w, 4) for w in combiner.weights], "fitted": combiner.fitted}, indent=2))
    return 0
