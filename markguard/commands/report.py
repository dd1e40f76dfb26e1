"""`markguard report OUT`: the reviewer's HTML page for a finished scan."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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

    check_finished(Path(args.out))
    path = write_report(args.out, statuses=STATUSES_ALL if args.all else DEFAULT_STATUSES, page_size=args.page_size)
    print(path)
    return 0


def check_finished(out: Path) -> None:
    """One line naming ``--resume`` when the scan in ``out`` was stopped before it finished (rows in
    results.jsonl.partial, or results.jsonl without summary.json)."""
    from markguard.errors import MarkguardError
    from markguard.infer.results import PARTIAL, RESULTS, SUMMARY

    if (out / SUMMARY).is_file() or not ((out / PARTIAL).is_file() or (out / RESULTS).is_file()):
        return  # finished, or no scan at all (the report says which command to run)
    command = f"markguard scan DUMP -i INDEX -o {out} --resume"
    try:  # the scan's own input and indexes, when its pins say them
        pins = json.loads((out / "scan.json").read_text(encoding="utf-8"))
        command = f"markguard scan {pins['input']} " + " ".join(f"-i {i['path']}" for i in pins["indexes"]) + f" -o {out} --resume"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise MarkguardError(f"{out}: the scan did not finish (no {SUMMARY}); continue it with `{command}` "
                         f"(with the options it was started with), then run `markguard report {out}`")
