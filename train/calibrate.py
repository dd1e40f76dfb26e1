"""Calibration: choose the scan's flag and review thresholds for a target false-positive rate."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from markguard.datasets.decode import load_mark
from markguard.datasets.registry import load_gallery


@dataclass
class Scored:
    score: float  # best similarity in the listing
    positive: bool  # shows a registered mark
    correct: bool  # the best match is one of the marks it shows


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


def thresholds_for(scored: list[Scored], target_fpr: float) -> dict:
    """Flag at ``target_fpr`` on the negatives, review at five times that; with the rates they give."""
    pos = np.array([s.score for s in scored if s.positive], dtype=np.float64)
    neg = np.array([s.score for s in scored if not s.positive], dtype=np.float64)
    if len(neg) == 0 or len(pos) == 0:
        return {"flag": 0.6, "review": 0.5, "per_brand": {}, "metrics": {}}

    def at(fpr):  # the smallest threshold whose false-positive rate is at most ``fpr``
        srt = np.sort(neg)[::-1]
        k = int(np.floor(fpr * len(neg)))
        return float(srt[k] + 1e-4) if k < len(srt) else float(srt[-1])

    flag, review = at(target_fpr), at(min(1.0, 5 * target_fpr))
    review = min(review, flag)
    correct = np.array([s.correct for s in scored if s.positive])
    tp = (pos >= flag) & correct
    metrics = {"calibration": {
        "data": "synthetic listings of the training marks (closed set)",
        "positives": int(len(pos)), "negatives": int(len(neg)),
        "auc": round(roc_auc(pos, neg), 4),
        "tpr_at_flag": round(float((pos >= flag).mean()), 4),
        "tpr_correct_mark_at_flag": round(float(tp.mean()), 4),
        "fpr_at_flag": round(float((neg >= flag).mean()), 4),
        "target_fpr": target_fpr,
    }}
    return {"flag": round(flag, 4), "review": round(review, 4), "per_brand": {}, "metrics": metrics}


def calibrate_synthetic(model, card, cfg, *, device: str = "cpu", log=print) -> dict:
    """Scan synthetic listings of the training gallery's marks and set thresholds from their scores."""
    from markguard.datasets.synth import SynthConfig, SynthMark, make_listing, make_marks, Backgrounds
    from markguard.infer.decide import Policy
    from markguard.infer.embed import embed_references
    from markguard.infer.index import MarkIndex
    from markguard.infer.scan import ScanOptions, Searcher, scan_rows
    from markguard.train.loop import split_brands

    gallery = load_gallery(cfg.gallery)
    refs, _ = split_brands(gallery, cfg.holdout_brands)
    marks = [SynthMark(r.brand, r.mark, load_mark(r.path), "mark") for r in refs]
    vectors = embed_references(model, card, [m.image for m in marks], device=device)
    index = MarkIndex.build(vectors, [{"brand": m.brand, "mark": m.mark, "source": ""} for m in marks],
                            fingerprint=card.fingerprint, kind="flat")
    rng = np.random.default_rng(cfg.seed + 7919)
    distractors = make_marks(6, 1, seed=cfg.seed + 50_000, prefix="calib-other")
    truth = {}
    with tempfile.TemporaryDirectory(prefix="markguard-calib-") as tmp:
        bgs = Backgrounds(cfg.backgrounds)
        sc = SynthConfig(p_near_match=0.0)
        for i in range(cfg.calib_listings):
            lst = make_listing(rng, marks, distractors, bgs, sc)
            lst.image.save(Path(tmp) / f"c{i:05d}.jpg", quality=90)
            truth[f"c{i:05d}"] = {(m.brand, m.mark) for m in lst.marks if m.registered}
        searcher = Searcher("", Path(tmp), index, model, card, {})
        opts = ScanOptions(device=device, workers=0, batch_size=8)
        scored = []
        for row in scan_rows(tmp, [searcher], Policy(-1.0, -1.0), opts):
            if row.status == "error":
                continue
            marks_in = truth[row.listing_id]
            best = row.matches[0] if row.matches else None
            scored.append(Scored(row.score or -1.0, bool(marks_in), best is not None and (best.brand, best.mark) in marks_in))
    result = thresholds_for(scored, cfg.target_fpr)
    log(f"calibrate: flag {result['flag']}, review {result['review']} ({result['metrics'].get('calibration', {})})")
    return result
