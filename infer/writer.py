"""Write: results.jsonl rows in input order, appended through a partial file that a resumed scan continues.

Rows go to ``results.jsonl.partial`` (flushed each batch, fsynced every few seconds). A resume keeps
the complete rows, truncates a torn last line and skips that many inputs; a finished scan renames
the partial file to ``results.jsonl``. Every input therefore appears exactly once.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from markguard.errors import MarkguardError

RESULTS = "results.jsonl"
PARTIAL = "results.jsonl.partial"
ROW_KEYS = ("listing_id", "image", "seller_id", "status", "score", "brand", "mark", "box", "matches", "error")


def recover_partial(path: Path) -> int:
    """Truncate ``path`` after its last complete, valid row; return how many rows it keeps."""
    if not path.exists():
        return 0
    good_bytes, rows = 0, 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                json.loads(line)
            except json.JSONDecodeError:
                break
            good_bytes += len(line)
            rows += 1
    with open(path, "r+b") as f:
        f.truncate(good_bytes)
    return rows


class ResultsWriter:
    def __init__(self, out_dir: Path, *, resume: bool, fsync_every_s: float = 2.0):
        self.out_dir = out_dir
        self.path = out_dir / PARTIAL
        self.rows = recover_partial(self.path) if resume else 0
        if not resume:
            self.path.unlink(missing_ok=True)
        self.f = open(self.path, "ab")
        self.fsync_every_s = fsync_every_s
        self._last_sync = time.monotonic()

    def write(self, rows: list[dict]) -> None:
        self.f.write(b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows))
        self.f.flush()
        self.rows += len(rows)
        if time.monotonic() - self._last_sync > self.fsync_every_s:
            os.fsync(self.f.fileno())
            self._last_sync = time.monotonic()

    def finish(self) -> Path:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        final = self.out_dir / RESULTS
        os.replace(self.path, final)
        return final

    def close(self) -> None:
        if not self.f.closed:
            self.f.flush()
            self.f.close()


def check_rows(path: Path) -> None:
    """Refuse a results file whose rows do not follow the contract (used by tests and ``merge``)."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            row = json.loads(line)
            if tuple(row) != ROW_KEYS:
                raise MarkguardError(f"{path}:{n}: keys {list(row)} differ from the results.jsonl contract {list(ROW_KEYS)}")
