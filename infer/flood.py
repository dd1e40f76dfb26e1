"""Flood guard: a reference that suddenly matches far more photos than its history, or than a share of the scan, has its flags past the limit held as ``review``.

A generic shape registered by mistake, or a hub reference, can flag thousands of photos in one
dump; the trusted matching systems quarantine such a reference until someone looks. Here the rule
runs over the rows in input order, after the decision: the ``c``-th photo flagged for a reference
(brand/mark), at the ``i``-th row of the scan, is held as ``review`` when

    c > max(min_flags, share x i)                          (no history of the reference), or
    c > max(min_flags, factor x rate x i)                  (rate: its flags per photo in earlier scans, + 1 smoothing)

Counts depend only on the rows before, in input order — not on batches, workers or engines — and a
resumed scan replays its written rows first, so it holds the same rows as one uninterrupted run. A
sharded scan is its own input for the guard (each shard counts its own rows).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from markguard.errors import MarkguardError

SHARE = 0.02  # no one reference flags more than 2% of a scan's photos unheld (a bench brand is ~0.3% of its listings)
MIN_FLAGS = 20  # below this many flags a reference is never held: small scans and real bursts of one brand pass
HISTORY_FACTOR = 5.0  # with history: held past 5x the reference's usual flags per photo


@dataclass
class FloodSettings:
    share: float = SHARE  # 0: the guard is off
    min_flags: int = MIN_FLAGS
    factor: float = HISTORY_FACTOR
    history: dict[str, float] = field(default_factory=dict)  # "brand/mark" -> flags per photo in earlier scans
    history_images: int = 0

    def __post_init__(self):
        if not (0 <= self.share <= 1) or self.min_flags < 0 or not self.factor > 0:
            raise MarkguardError(f"flood guard: share {self.share} must lie in [0, 1], min flags {self.min_flags} be 0 or more "
                                 f"and the history factor {self.factor} above 0")

    def limit(self, ref: str, seen: int) -> float:
        if ref in self.history:
            return max(self.min_flags, self.factor * self.history[ref] * seen)
        return max(self.min_flags, self.share * seen)


def read_history(outs: list[str | Path]) -> tuple[dict[str, float], int]:
    """Flags per photo of each reference over earlier scans' summary.json (``flood.flags``), + 1 smoothing."""
    flags: dict[str, int] = {}
    images = 0
    for out in outs:
        path = Path(out) / "summary.json"
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            counts = doc["flood"]["flags"]
            n = int(doc["images"])
        except FileNotFoundError:
            raise MarkguardError(f"{path}: not found; --flood-history takes earlier scans' output folders") from None
        except (OSError, ValueError, KeyError, TypeError):
            raise MarkguardError(f"{path}: has no flood counts (scanned before the flood guard?); leave it out of --flood-history") from None
        images += n
        for ref, c in counts.items():
            flags[str(ref)] = flags.get(str(ref), 0) + int(c)
    if not images:
        return {}, 0
    return {ref: (c + 1) / images for ref, c in flags.items()}, images


class FloodGuard:
    """Holds flags past a reference's limit as ``review``; feed it every row, in input order."""

    def __init__(self, settings: FloodSettings, flag_value=None):
        self.settings = settings
        self.flag_value = flag_value  # (match) -> bool: would this match flag; used to recount held rows on a resume
        self.seen = 0
        self.flags: dict[str, int] = {}  # would-be flags per reference (held ones included)
        self.held: dict[str, int] = {}

    @staticmethod
    def ref(row) -> str:
        return f"{row.brand}/{row.mark}"

    def apply(self, row):
        """The row, its status turned from ``flag`` to ``review`` when its reference is past its limit."""
        self.seen += 1
        if row.status != "flag" or not self.settings.share:
            return row
        ref = self.ref(row)
        c = self.flags.get(ref, 0) + 1
        self.flags[ref] = c
        if c > self.settings.limit(ref, self.seen):
            row.status = "review"
            self.held[ref] = self.held.get(ref, 0) + 1
        return row

    def replay(self, row) -> None:
        """A row a resumed scan already wrote: counted as when it was decided (a held row counts as a flag)."""
        self.seen += 1
        if not self.settings.share:
            return
        held = row.status == "review" and self.flag_value is not None and any(
            (m.brand, m.mark, m.box) == (row.brand, row.mark, row.box) and self.flag_value(m) for m in row.matches)
        if row.status == "flag" or held:
            ref = self.ref(row)
            self.flags[ref] = self.flags.get(ref, 0) + 1
            if held:
                self.held[ref] = self.held.get(ref, 0) + 1

    def to_json(self) -> dict:
        """summary.json's ``flood``: the settings, each held reference with its counts, and every reference's flags."""
        s = self.settings
        return {"share": s.share, "min_flags": s.min_flags, "factor": s.factor, "history_images": s.history_images,
                "held": sum(self.held.values()),
                "references": {ref: {"flags": self.flags[ref], "held": h, "photos": self.seen,
                                     "limit_at_end": math.floor(s.limit(ref, self.seen))}
                               for ref, h in sorted(self.held.items(), key=lambda kv: -kv[1])},
                "flags": dict(sorted(self.flags.items()))}


def guard_for(opts, policy) -> FloodGuard:
    """The scan's guard from its options (``flood_share``, ``flood_min``, ``flood_history``) and its policy."""
    history, images = read_history(opts.flood_history or [])
    settings = FloodSettings(share=opts.flood_share, min_flags=opts.flood_min, history=history, history_images=images)

    def would_flag(m) -> bool:
        return policy.value(m) >= policy.thresholds(m.brand, m.index)[0]

    return FloodGuard(settings, would_flag)
