"""The results contract: a scan output folder's file names, a row's JSON form, and the one reader of results.jsonl.

Everything that writes or reads a scan's rows — the writer, resume, merge, the Ray engine, parquet,
the report, evaluation and calibration — goes through here (docs/contracts.md describes the format).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from markguard.errors import MarkguardError

RESULTS = "results.jsonl"
PARTIAL = "results.jsonl.partial"
SUMMARY = "summary.json"
STATE = "scan.json"  # what a resume must match: the input, the indexes, the options that decide the rows
PARQUET = "results.parquet"
ROW_KEYS = ("listing_id", "image", "seller_id", "status", "score", "brand", "mark", "box", "matches", "error")
STATUSES = ("flag", "review", "pass", "allowed", "error")
MATCH_KEYS = {"brand", "mark", "score", "box", "index", "evidence", "probability"}


@dataclass
class Match:
    """One candidate mark in one photo; ``box`` is in original pixels."""

    brand: str
    mark: str | None  # None for a match only the text found: OCR read the brand's name where no region matched a mark of it
    score: float  # the embedding's similarity to the mark (0 for a match only the text found)
    box: list[int] | None
    index: str | None = None  # which index it came from, when a scan searches several
    evidence: dict | None = None  # what else supports the match (see docs/contracts.md); None when nothing was measured
    probability: float | None = None  # the combiner's probability that the photo shows this mark; None without a combiner

    def to_json(self) -> dict:
        d = {"brand": self.brand, "mark": self.mark, "score": round(float(self.score), 4), "box": self.box}
        if self.index is not None:
            d["index"] = self.index
        if self.evidence is not None:
            d["evidence"] = self.evidence
        if self.probability is not None:
            d["probability"] = round(float(self.probability), 4)
        return d

    @classmethod
    def from_json(cls, d) -> Match:
        if not isinstance(d, dict):
            raise ValueError(f"a match is a {type(d).__name__}, not an object")
        unknown = set(d) - MATCH_KEYS
        if unknown:
            raise ValueError(f"match has unknown key(s) {sorted(unknown)}")
        evidence = d.get("evidence")
        if evidence is not None and not isinstance(evidence, dict):
            raise ValueError("match evidence is not an object")
        probability = _number(d, "probability", optional=True)
        if probability is not None and not 0.0 <= probability <= 1.0:
            raise ValueError(f"match probability {probability} is not between 0 and 1")
        if "mark" not in d:  # null for a match only the text found, but always there
            raise ValueError("match has no key 'mark'")
        return cls(_str(d, "brand"), _str(d, "mark", optional=True), _number(d, "score"), _box(d.get("box")),
                   _str(d, "index", optional=True), evidence, probability)


@dataclass
class ScanRow:
    """One line of results.jsonl: one input photo and what the scan decided about it."""

    listing_id: str
    image: str
    seller_id: str | None
    status: str  # one of STATUSES
    score: float | None
    brand: str | None
    mark: str | None
    box: list[int] | None
    matches: list[Match]
    error: str | None = None
    kept: list | None = field(default=None, repr=False, compare=False)  # scan --keep-embeddings: its regions (infer/rematch.py), never written here

    def to_json(self) -> dict:
        return {"listing_id": self.listing_id, "image": self.image, "seller_id": self.seller_id, "status": self.status,
                "score": None if self.score is None else round(float(self.score), 4), "brand": self.brand, "mark": self.mark,
                "box": self.box, "matches": [m.to_json() for m in self.matches], "error": self.error}

    @classmethod
    def from_json(cls, d) -> ScanRow:
        """A row from its JSON form; ValueError (with the reason) for anything that is not one."""
        if not isinstance(d, dict):
            raise ValueError(f"a {type(d).__name__}, not a JSON object")
        missing = [k for k in ROW_KEYS if k not in d]
        if missing:
            raise ValueError(f"missing key(s) {missing}")
        unknown = set(d) - set(ROW_KEYS)
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)}")
        status = d["status"]
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
        if not isinstance(d["matches"], list):
            raise ValueError("matches is not a list")
        return cls(_str(d, "listing_id"), _str(d, "image"), _str(d, "seller_id", optional=True), status,
                   _number(d, "score", optional=True), _str(d, "brand", optional=True), _str(d, "mark", optional=True),
                   _box(d["box"]), [Match.from_json(m) for m in d["matches"]], _str(d, "error", optional=True))


def parse_row(line: bytes | str) -> ScanRow:
    """One results.jsonl line as a row; ValueError for a line that is not one (torn, not JSON, not a row)."""
    return ScanRow.from_json(json.loads(line))  # JSONDecodeError is a ValueError


def read_results(path: str | Path, *, fix: str = "re-run the scan to redo it") -> Iterator[ScanRow]:
    """Stream the rows of a results file in order; a line that is not a row stops with one line naming
    the file, the line number and ``fix``. Blank lines are skipped."""
    path = Path(path)
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise MarkguardError(f"{path}: not found; {fix}") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield parse_row(line)
            except ValueError as e:
                raise MarkguardError(f"{path}:{n}: not a valid result row ({e}); {fix}") from None


def read_summary(out_dir: str | Path, *, fix: str = "re-run the scan") -> dict:
    """``OUT/summary.json`` as a dict, or one line naming the file and ``fix``."""
    path = Path(out_dir) / SUMMARY
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MarkguardError(f"{path}: not found; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MarkguardError(f"{path}: not valid JSON ({e}); {fix}") from None
    if not isinstance(doc, dict):
        raise MarkguardError(f"{path}: expected a JSON object; {fix}")
    return doc


def check_rows(path: Path) -> None:
    """Refuse a results file whose rows do not follow the contract, keys in their order (used by tests and ``merge``)."""
    with open(path, encoding="utf-8", errors="replace") as f:  # bytes that are not UTF-8 fail as JSON, with a line number
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                ScanRow.from_json(row)
            except ValueError as e:
                raise MarkguardError(f"{path}:{n}: not a valid result row ({e})") from None
            if tuple(row) != ROW_KEYS:
                raise MarkguardError(f"{path}:{n}: keys {list(row)} differ from the results.jsonl contract {list(ROW_KEYS)}")


def _str(d: dict, key: str, *, optional: bool = False) -> str | None:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise ValueError(f"{key} is {type(v).__name__}, not a string")
    return v


def _number(d: dict, key: str, *, optional: bool = False) -> float | None:
    v = d.get(key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{key} is {v!r}, not a finite number")
    return float(v)


def _box(v) -> list | None:
    if v is None:
        return None
    if (not isinstance(v, list) or len(v) != 4
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in v)):
        raise ValueError(f"box {v!r} is not four numbers")
    return v
