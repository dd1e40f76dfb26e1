"""Negatives: the bank of region embeddings reviewers rejected, per reference, and the rule by which a scan lowers a
candidate closer to a reference's negatives than to the reference (``markguard feedback`` fills it: infer/feedback.py)."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from markguard.errors import MarkguardError


FEEDBACK_KEY = "feedback"  # in the index's markguard.json (MarkIndex.meta): saved, checksummed and swapped in with the index
# the rule: a candidate whose region is at least (similarity - MARGIN) close to one of its reference's negatives is
# lowered by STRENGTH x (that excess); measured on the real-photo bench (benchmarks/results/feedback.md)
MARGIN = 0.02
STRENGTH = 5.0
IOU_SAME_REGION = 0.5


@dataclass
class Rule:
    margin: float = MARGIN
    strength: float = STRENGTH

    def lower(self, similarity: np.ndarray, negative: np.ndarray) -> np.ndarray:
        """Similarities lowered where the region is closer to a negative than to the reference (less ``margin``)."""
        excess = negative - similarity + self.margin
        return np.where(excess > 0, similarity - self.strength * excess, similarity)


def encode_vector(v: np.ndarray) -> str:
    return base64.b64encode(np.asarray(v, np.float16).tobytes()).decode("ascii")


def decode_vector(s: str, dim: int) -> np.ndarray:
    v = np.frombuffer(base64.b64decode(s, validate=True), np.float16)
    if v.shape != (dim,):
        raise ValueError(f"a vector of {v.size} values, not {dim}")
    return v.astype(np.float32)


def negative_bank(meta: dict | None, dim: int) -> dict[tuple[str, str], np.ndarray]:
    """(brand, mark) → its negatives (n, dim), from an index's metadata; {} when it has none."""
    doc = (meta or {}).get(FEEDBACK_KEY) or {}
    out: dict[tuple[str, str], list[np.ndarray]] = {}
    for i, n in enumerate(doc.get("negatives") or []):
        try:
            out.setdefault((str(n["brand"]), str(n["mark"])), []).append(decode_vector(n["vector"], dim))
        except (KeyError, TypeError, ValueError) as e:
            raise MarkguardError(f"markguard.json: feedback negative {i} is damaged ({e}); undo its round with "
                                 f"`markguard feedback --undo ID -i INDEX` or rebuild the index") from None
    return {k: np.stack(v) for k, v in out.items()}


def rule_of(meta: dict | None) -> Rule:
    r = ((meta or {}).get(FEEDBACK_KEY) or {}).get("rule") or {}
    try:
        return Rule(float(r.get("margin", MARGIN)), float(r.get("strength", STRENGTH)))
    except (TypeError, ValueError):
        raise MarkguardError(f"markguard.json: feedback rule {r!r} is not two numbers (margin, strength)") from None


class WithNegatives:
    """An index whose search lowers a candidate closer to its reference's negatives than to the reference; all else
    is the wrapped index's."""

    def __init__(self, index, bank: dict[tuple[str, str], np.ndarray], rule: Rule):
        self.index, self.rule = index, rule
        self._bank = bank
        self._by_id: dict[int, np.ndarray | None] = {}

    def __getattr__(self, name):
        return getattr(self.index, name)

    def __len__(self) -> int:
        return len(self.index)

    def negatives_of(self, ids) -> list[np.ndarray | None]:
        missing = [int(i) for i in ids if int(i) not in self._by_id]
        for i, rec in zip(missing, self.index.get(missing) if missing else []):
            self._by_id[i] = None if rec is None else self._bank.get((rec.brand, rec.mark))
        return [self._by_id[int(i)] for i in ids]

    def search(self, queries, k: int):
        scores, ids = self.index.search(queries, k)
        uniq = np.unique(ids[ids >= 0])
        q = np.asarray(queries, np.float32)
        for rid, neg in zip(uniq.tolist(), self.negatives_of(uniq.tolist())):
            if neg is None:
                continue
            rows, cols = np.nonzero(ids == rid)
            nearest = (q[rows] @ neg.T).max(axis=1)
            scores[rows, cols] = self.rule.lower(scores[rows, cols], nearest)
        return scores, ids


def with_negatives(index, meta: dict | None):
    """``index`` wrapped with its feedback's negative bank, or itself when it has none (the scan's hook)."""
    bank = negative_bank(meta, index.dim)
    return WithNegatives(index, bank, rule_of(meta)) if bank else index
