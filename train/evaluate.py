"""Evaluation of a scan against ground truth: listing-level precision and recall, and whether the right mark was named."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from markguard.errors import MarkguardError


@dataclass
class ScanScore:
    listings: int
    positives: int  # listings showing a registered mark that the seller may not use
    flagged: int
    true_positives: int
    precision: float
    recall: float
    right_mark: float  # among true positives, the share whose decided mark is one the photo shows
    box_iou50: float  # among true positives with a box, the share whose box overlaps the truth with IoU >= 0.5
    errors: int

    def to_json(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise MarkguardError(f"{path}: not found")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def score_scan(results_path: str | Path, truth_path: str | Path, *, statuses=("flag",), authorized: dict[str, list[str]] | None = None) -> ScanScore:
    """Compare ``results.jsonl`` with a synth ``truth.jsonl`` (matched by listing_id + image)."""
    truth = {(t["listing_id"], t["image"]): t for t in read_jsonl(truth_path)}
    authorized = authorized or {}
    n = pos = flagged = tp = right = boxed = errors = 0
    for row in read_jsonl(results_path):
        t = truth.get((row["listing_id"], row["image"]))
        if t is None:
            continue
        n += 1
        shown = [m for m in t["marks"] if m["registered"] and t.get("seller_id") not in authorized.get(m["brand"], [])]
        is_pos = bool(shown)
        pos += is_pos
        errors += row["status"] == "error"
        if row["status"] in statuses:
            flagged += 1
            if is_pos:
                tp += 1
                hit = [m for m in shown if m["mark"] == row["mark"]]
                right += bool(hit)
                if hit and row["box"]:
                    boxed += max(_iou(row["box"], m["box"]) for m in hit) >= 0.5
    return ScanScore(n, pos, flagged, tp, tp / flagged if flagged else 0.0, tp / pos if pos else 0.0,
                     right / tp if tp else 0.0, boxed / right if right else 0.0, errors)
