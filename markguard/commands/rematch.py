"""`markguard rematch`: search a scan's stored region embeddings against an index that gained brands since, without a rescan."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rematch", help="re-search a scan's stored embeddings (scan --keep-embeddings) against a grown index",
                       description="Writes OUT/rematch.jsonl (the rows whose decision changed, in results.jsonl's form) and "
                                   "OUT/rematch.json; no photo is decoded or embedded again.")
    p.add_argument("out", metavar="OUT", help="a scan's output folder, scanned with --keep-embeddings")
    p.add_argument("--index", "-i", action="append", required=True, help="the index folder(s) the scan searched, grown since")
    p.add_argument("--model", "-m", help="checkpoint folder (default: the model each index was built with)")
    p.set_defaults(func=run)


def run(args) -> int:
    from markguard.infer.rematch import rematch

    result = rematch(args.out, args.index, model=args.model)
    result.pop("rows")
    print(json.dumps(result, indent=2))
    return 0
