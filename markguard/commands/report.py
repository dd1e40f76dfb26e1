"""`markguard report OUT`: the reviewer's HTML page for a finished scan."""

from __future__ import annotations

import argparse

from markguard.commands.args import positive_int

STATUSES_ALL = ("flag", "review", "allowed", "pass")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="write OUT/report.html, a static page to review what a scan flagged",
        description="Write OUT/report.html (with OUT/report/) from OUT/results.jsonl and OUT/summary.json.",
    )
    p.add_argument("out", metavar="OUT", help="the scan's output folder (markguard scan ... -o OUT)")
    p.add_argument("--page-size", type=positive_int, default=50, metavar="N", help="rows per page when the page opens (default 50)")
    p.add_argument("--all", action="store_true", help="also list listings that passed (default: flag, review, allowed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from markguard.infer.report import DEFAULT_STATUSES, write_report  # lazy: keeps `markguard --help` fast

    path = write_report(args.out, statuses=STATUSES_ALL if args.all else DEFAULT_STATUSES, page_size=args.page_size)
    print(path)
    return 0
