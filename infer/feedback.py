"""Feedback: reviewers' decisions (docs/contracts.md, "Decisions") read at the door, turned into a negative bank per reference and labelled examples, saved with the index."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from markguard.errors import MarkguardError

FORMAT = "markguard-decisions/1"
DECISIONS = ("confirm", "reject", "other")
KEYS = {"format", "listing_id", "image", "brand", "mark", "box", "status", "score", "decision", "other_brand", "note", "time",
        "model", "indexes", "input", "reviewer"}
REQUIRED = ("format", "listing_id", "brand", "mark", "decision", "time", "model")


@dataclass
class Decision:
    """One reviewer's decision on one row of a scan: the row's best match was the brand (confirm), was not (reject),
    or showed ``other_brand`` instead (other)."""

    listing_id: str
    brand: str
    mark: str | None
    decision: str  # one of DECISIONS
    time: str
    model: str  # the fingerprint of the model that scanned the photo
    image: str | None = None
    box: list[float] | None = None
    other_brand: str | None = None
    note: str = ""
    status: str | None = None
    score: float | None = None
    indexes: list[dict] = field(default_factory=list)  # [{path, name, save}] of the scan
    input: str | None = None
    reviewer: str | None = None

    def to_json(self) -> dict:
        return {"format": FORMAT, "listing_id": self.listing_id, "image": self.image, "brand": self.brand, "mark": self.mark,
                "box": self.box, "status": self.status, "score": self.score, "decision": self.decision,
                "other_brand": self.other_brand, "note": self.note, "time": self.time, "model": self.model,
                "indexes": self.indexes, "input": self.input, **({"reviewer": self.reviewer} if self.reviewer else {})}

    @classmethod
    def from_json(cls, d) -> Decision:
        """A decision from one line's object; ValueError naming the field for anything else."""
        if not isinstance(d, dict):
            raise ValueError(f"a {type(d).__name__}, not a JSON object")
        missing = [k for k in REQUIRED if d.get(k) is None]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        unknown = sorted(set(d) - KEYS)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}")
        if d["format"] != FORMAT:
            raise ValueError(f"format {d['format']!r} is not {FORMAT!r}")
        if d["decision"] not in DECISIONS:
            raise ValueError(f"decision {d['decision']!r} is not one of {', '.join(DECISIONS)}")
        for key in ("listing_id", "brand", "time", "model"):
            if not isinstance(d[key], str) or not d[key]:
                raise ValueError(f"{key} must be non-empty text")
        for key in ("mark", "image", "other_brand", "note", "status", "input", "reviewer"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise ValueError(f"{key} must be text or null")
        if d["decision"] == "other" and not d.get("other_brand"):
            raise ValueError("decision 'other' needs other_brand, the brand the photo shows")
        box = d.get("box")
        if box is not None and (not isinstance(box, list) or len(box) != 4 or
                                any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in box)):
            raise ValueError(f"box {box!r} is not four numbers")
        score = d.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score)):
            raise ValueError(f"score {score!r} is not a number")
        indexes = d.get("indexes") or []
        if not isinstance(indexes, list) or not all(isinstance(i, dict) for i in indexes):
            raise ValueError("indexes must be a list of objects {path, name, save}")
        return cls(d["listing_id"], d["brand"], d.get("mark"), d["decision"], d["time"], d["model"], d.get("image"), box,
                   d.get("other_brand"), d.get("note") or "", d.get("status"), None if score is None else float(score),
                   indexes, d.get("input"), d.get("reviewer"))


def read_decisions(path: str | Path) -> list[Decision]:
    """Every decision of a decisions file, in its order; the last decision on the same row (listing, brand, mark) wins.
    A line that is not a decision stops with the file, the line and what is wrong."""
    return list(_dedup(_lines(Path(path))))


def _lines(path: Path) -> Iterator[Decision]:
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise MarkguardError(f"{path}: not found; export it from report.html (the 'export decisions' button)") from None
    except IsADirectoryError:
        raise MarkguardError(f"{path}: is a folder; give the decisions file (JSON Lines) exported from report.html") from None
    with f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield Decision.from_json(json.loads(line))
                except ValueError as e:
                    raise MarkguardError(f"{path}:{n}: not a decision ({e}); see docs/contracts.md, Decisions") from None
        except UnicodeDecodeError:
            raise MarkguardError(f"{path}: not UTF-8 text; a decisions file is JSON Lines (docs/contracts.md, Decisions)") from None


def _dedup(decisions: Iterator[Decision]) -> Iterator[Decision]:
    last: dict[tuple, Decision] = {}
    for d in decisions:
        last.pop((d.listing_id, d.image, d.brand, d.mark), None)  # re-inserted: keeps the order of the final say
        last[(d.listing_id, d.image, d.brand, d.mark)] = d
    yield from last.values()
