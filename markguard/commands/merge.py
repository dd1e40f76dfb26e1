"""`markguard merge`: join the outputs of `scan --shard i/N` into one scan output."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="join shard outputs (scan --shard i/N) into one results.jsonl in input order",
                       description="Writes OUT/results.jsonl in the dump's global order and a merged OUT/summary.json.")
    p.add_argument("shards", nargs="+", help="the shard output folders, all N of them, in any order")
    p.add_argument("--out", "-o", required=True, help="output folder (new or empty)")
    p.add_argument("--format", action="append", choices=["jsonl", "parquet"], help="also write OUT/results.parquet")
    p.set_defaults(func=run)


def run(args) -> int:
    from markguard.infer.merge import merge_outputs

    formats = tuple(dict.fromkeys(["jsonl", *(args.format or [])]))
    summary = merge_outputs(args.shards, args.out, formats=formats)
    print(json.dumps({k: summary[k] for k in ("results", "images", "counts")}, indent=2))
    return 0
