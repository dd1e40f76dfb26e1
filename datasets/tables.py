"""The CSV and JSON Lines files users hand markguard (manifests, training lists, truth files), read one row at a time.

Both kinds are UTF-8 (a spreadsheet's byte-order mark is dropped, or it would rename the first
column); a file that is not, or a CSV line the csv module cannot read, stops with one line naming
the file and line. What a row must hold, and what a bad JSON line costs, is the caller's: a scan's
manifest stops on it, a training list skips it with the reason.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable, Iterator

from markguard.errors import MarkguardError


def csv_rows(path: Path, *, header: Callable[[list[str]], None] | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, row) for each row of the CSV file at ``path``; ``header`` is called with the column names first."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            try:
                if header is not None:
                    header(list(reader.fieldnames or []))
                for row in reader:
                    yield reader.line_num, row
            except csv.Error as e:  # a field over the csv module's limit (128 KiB), a stray quote
                raise MarkguardError(f"{path}:{reader.line_num + 1}: unreadable CSV ({e}); fix or remove that line") from None
    except UnicodeDecodeError:
        raise MarkguardError(f"{path}: not UTF-8 text; save it as UTF-8") from None


def csv_header(path: Path) -> list[str]:
    """The column names of the CSV file at ``path`` (none for an empty file)."""
    names: list[str] = []
    for _ in csv_rows(path, header=names.extend):
        break
    return names


def jsonl_lines(path: Path, *, errors: str = "strict") -> Iterator[tuple[int, object, str | None]]:
    """(line number, value, None) for each non-blank line of ``path``; (line number, None, the parser's reason) for one that is not JSON."""
    try:
        with open(path, encoding="utf-8-sig", errors=errors) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line), None
                except json.JSONDecodeError as e:
                    yield n, None, e.msg
    except UnicodeDecodeError:
        raise MarkguardError(f"{path}: not UTF-8 text; save it as UTF-8") from None


def read_jsonl(path: str | Path, required: tuple[str, ...] = ("listing_id", "image")) -> list[dict]:
    """JSON objects, one a line, each with the ``required`` keys; anything else is one line naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise MarkguardError(f"{path}: not found")
    rows = []
    for n, row, problem in jsonl_lines(path, errors="replace"):
        if problem is not None:
            raise MarkguardError(f"{path}:{n}: not JSON Lines ({problem}); give a .jsonl file, one JSON object a line")
        if not isinstance(row, dict) or not all(k in row for k in required):
            raise MarkguardError(f"{path}:{n}: expected a JSON object with {', '.join(required)}")
        rows.append(row)
    return rows
