"""Rates of a score population that calibration and evaluation share: ROC AUC, the threshold at an FPR or a precision, the TPR at an FPR."""

from __future__ import annotations

import numpy as np


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a positive outscores a negative (ties count half): the ROC AUC, without sklearn."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    ranks = allv.argsort().argsort().astype(np.float64) + 1
    # average ranks over ties
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def threshold_at_fpr(neg: np.ndarray, fpr: float) -> float:
    """The smallest threshold whose false-positive rate on ``neg`` is at most ``fpr``."""
    srt = np.sort(np.asarray(neg, dtype=np.float64))[::-1]
    k = int(np.floor(fpr * len(srt)))
    return float(srt[k] + 1e-4) if k < len(srt) else float(srt[-1])


def threshold_at_precision(scores: np.ndarray, good: np.ndarray, precision: float) -> float | None:
    """The smallest threshold at which at least ``precision`` of what scores at or above it is ``good``; None if none."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s, g = np.asarray(scores, dtype=np.float64)[order], np.asarray(good, dtype=bool)[order]
    prec = np.cumsum(g) / np.arange(1, len(g) + 1)
    # a threshold can only cut between distinct scores: position i is a cut when the next score is lower
    ok = [i for i in range(len(s)) if prec[i] >= precision and (i == len(s) - 1 or s[i + 1] < s[i])]
    return float(s[max(ok)]) if ok else None


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float) -> float:
    """Share of ``pos`` at or above the threshold that lets ``fpr`` of ``neg`` through; NaN when either is empty."""
    return float((pos >= threshold_at_fpr(neg, fpr)).mean()) if len(pos) and len(neg) else float("nan")
