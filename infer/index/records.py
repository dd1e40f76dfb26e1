"""The record store: each indexed vector's brand, mark and source in an in-memory SQLite database (marks.sqlite when saved)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from markguard.errors import MarkguardError

_COLUMNS = "id, brand, mark, source, added"


@dataclass
class MarkRecord:
    """Metadata of one indexed vector."""

    id: int  # stable: never reused after removal, kept across save/load
    brand: str
    mark: str
    source: str  # gallery file the vector came from, may be ""
    added: str  # ISO date-time, UTC


_SCHEMA = """
CREATE TABLE IF NOT EXISTS marks(id INTEGER PRIMARY KEY, brand TEXT NOT NULL, mark TEXT NOT NULL,
                                 source TEXT NOT NULL DEFAULT '', added TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS marks_brand_mark ON marks(brand, mark);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tombstones(id INTEGER PRIMARY KEY);
"""
_SQL_CHUNK = 900  # stay under SQLite's bound-parameter limit on old builds


def _memory_db() -> sqlite3.Connection:
    # check_same_thread=False: the scan may search from a worker thread; MarkIndex serialises access
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.executescript(_SCHEMA)
    return db


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _record_rows(records: list[dict], ids: np.ndarray) -> list[tuple]:
    rows = []
    stamp = _now()
    for i, (rid, rec) in enumerate(zip(ids.tolist(), records)):
        if not isinstance(rec, dict):
            raise MarkguardError(f"record {i} is a {type(rec).__name__}, expected a dict with brand, mark, source")
        brand, mark = rec.get("brand"), rec.get("mark")
        if not isinstance(brand, str) or not brand or not isinstance(mark, str) or not mark:
            raise MarkguardError(f"record {i} needs non-empty 'brand' and 'mark' strings, got {rec!r}")
        rows.append((rid, brand, mark, str(rec.get("source") or ""), str(rec.get("added") or stamp)))
    return rows


def matching_ids(db: sqlite3.Connection, *, brand: str | None, mark: str | None, ids) -> list[int]:
    """Ids of the records matching every filter given (``ids`` None: any id)."""
    where, args = [], []
    if brand is not None:
        where.append("brand = ?")
        args.append(brand)
    if mark is not None:
        where.append("mark = ?")
        args.append(mark)
    if ids is None:
        return [r[0] for r in db.execute(f"SELECT id FROM marks WHERE {' AND '.join(where)}", args)]
    seq = ids if isinstance(ids, (np.ndarray, list, tuple)) else list(np.atleast_1d(ids)) if np.isscalar(ids) else list(ids)
    wanted = [int(i) for i in np.asarray(seq, dtype=np.int64).ravel()]
    found = []
    for s in range(0, len(wanted), _SQL_CHUNK):
        part = wanted[s:s + _SQL_CHUNK]
        sql = " AND ".join([f"id IN ({','.join('?' * len(part))})"] + where)
        found += [r[0] for r in db.execute(f"SELECT id FROM marks WHERE {sql}", part + args)]
    return found


def delete_ids(db: sqlite3.Connection, ids: list[int]) -> None:
    """Delete these records; the caller holds the transaction (so a FAISS failure rolls it back)."""
    for s in range(0, len(ids), _SQL_CHUNK):
        part = ids[s:s + _SQL_CHUNK]
        db.execute(f"DELETE FROM marks WHERE id IN ({','.join('?' * len(part))})", part)


def records_by_id(db: sqlite3.Connection, ids: list[int]) -> dict[int, MarkRecord]:
    found: dict[int, MarkRecord] = {}
    for s in range(0, len(ids), _SQL_CHUNK):
        part = ids[s:s + _SQL_CHUNK]
        for row in db.execute(f"SELECT {_COLUMNS} FROM marks WHERE id IN ({','.join('?' * len(part))})", part):
            found[row[0]] = MarkRecord(*row)
    return found


def records_after(db: sqlite3.Connection, last: int, limit: int = 1000) -> list[MarkRecord]:
    """One page of records by id, after id ``last``."""
    rows = db.execute(f"SELECT {_COLUMNS} FROM marks WHERE id > ? ORDER BY id LIMIT ?", (last, limit)).fetchall()
    return [MarkRecord(*r) for r in rows]
