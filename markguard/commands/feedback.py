"""`markguard feedback`: a reviewer's decisions into the index — negatives for the references they fooled, labelled examples for calibrate."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("feedback", help="apply a decisions file (exported from report.html) to the index, or undo a round",
                       description="Rejected matches' regions join a negative bank of the reference they fooled (a later scan "
                                   "lowers a candidate closer to them than to the reference); every decision becomes a labelled "
                                   "example (--truth-out: the CSV `markguard calibrate --combiner --truth` reads). One atomic save "
                                   "of the index; `markguard index info` lists the rounds.")
    p.add_argument("decisions", nargs="?", metavar="DECISIONS", help="decisions.jsonl (docs/contracts.md, Decisions)")
    p.add_argument("--index", "-i", required=True, help="the index the scan searched")
    p.add_argument("--scan", metavar="OUT", help="the scan's output folder: its rows check the listings, and its stored "
                   "embeddings (scan --keep-embeddings) give the regions without decoding a photo")
    p.add_argument("--dump", help="the scanned dump (default: the decisions' input), when no --scan is given")
    p.add_argument("--skip-unknown", action="store_true", help="leave out decisions on listings not in the scan (counted)")
    p.add_argument("--undo", metavar="ID", help="remove feedback round ID (see `markguard index info`) instead")
    p.add_argument("--truth-out", metavar="CSV", help="write every round's labelled examples here (listing_id,brand)")
    p.add_argument("--model", "-m", help="checkpoint folder (default: the one the index was built with)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from markguard.device import resolve_device
    from markguard.errors import MarkguardError
    from markguard.fsio import atomic_write_text
    from markguard.infer.feedback import apply_feedback, labels_csv, undo_feedback
    from markguard.infer.index import MarkIndex

    if args.undo and args.decisions:
        raise MarkguardError("give DECISIONS to apply, or --undo ID to remove a round, not both")
    if args.undo:
        result = undo_feedback(args.index, args.undo)
    elif args.decisions:
        result = apply_feedback(args.decisions, args.index, scan=args.scan, dump=args.dump, skip_unknown=args.skip_unknown,
                                model=args.model, device=resolve_device(args.device))
    elif not args.truth_out:
        raise MarkguardError("give DECISIONS (a decisions.jsonl exported from report.html), --undo ID or --truth-out CSV")
    else:
        result = {}
    if args.truth_out:
        atomic_write_text(Path(args.truth_out), labels_csv(MarkIndex.load(args.index).meta))
        result["truth"] = args.truth_out
    print(json.dumps(result, indent=2))
    return 0
