"""Scoring on the real-photo benchmark (``datasets/realbench``): per tier TPR at FPR 1%, right brand, box IoU, and the hub figure.

``score_bench`` reads a scan's ``results.jsonl`` (any matcher that writes the scan's row format) and
the bench's ``truth.csv``. The operating threshold is the one that flags 1% of the negatives
(unregistered marks and photos without a mark); every tier is measured at that one threshold, and so
is every size band (the mark's box long side over the photo's short side, 0.05-0.15 ... 0.85-0.95)
of three groups: plain copies (tiers copy, small, large), all positives, and unregistered marks
(their share flagged: the FPR a size brings).
``evaluate_bench`` is ``markguard eval --bench``: index the bench's gallery, scan its listings, score.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from markguard.boxes import iou
from markguard.checkpoint import CARD, load_card, resolve_model_dir
from markguard.datasets.realbench import BANDS, COPY_TIERS, NEGATIVE_TIERS, POSITIVE_TIERS, TIERS, read_truth
from markguard.errors import MarkguardError
from markguard.fsio import atomic_write_text
from markguard.infer.bank import Hub, hub_of
from markguard.infer.build import build_index
from markguard.infer.results import ScanRow, read_results
from markguard.infer.scan import ScanOptions, run_scan
from markguard.preprocess import resolve_preprocessing
from markguard.train.rates import roc_auc, threshold_at_fpr

FPR = 0.01
IOU_HIT = 0.5
# the groups a size band is scored for: name -> (tiers, scored as positives)
BAND_GROUPS = {"copies": (COPY_TIERS, True), "positives": (POSITIVE_TIERS, True), "unregistered": (("unregistered",), False)}


@dataclass
class TierScore:
    listings: int
    flagged: float  # share scoring >= the threshold: TPR for a positive tier, FPR for a negative one
    right_brand: float | None  # share flagged with the true brand as the best match (positive tiers)
    box_iou50: float | None  # among those, the share whose box has IoU >= 0.5 with the truth


@dataclass
class BenchScore:
    threshold: float  # the score flagging FPR of the negatives
    fpr: float
    roc_auc: float
    positives: int
    negatives: int
    errors: int  # rows with status "error": scored as not flagged
    tiers: dict[str, TierScore]
    all_positive: TierScore
    hub: Hub
    # group (BAND_GROUPS) -> size band -> its score at the same threshold; empty for a bench without sizes in its truth
    bands: dict[str, dict[str, TierScore]] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return _round(asdict(self))

    def band_table(self) -> list[str]:
        """A Markdown table: per size band, TPR at the threshold / right brand (listings) of each group."""
        return band_table(self.to_json())

    def table(self, name: str = "") -> list[str]:
        """A Markdown table: one row per tier."""
        lines = [f"| {name or 'tier'} | listings | TPR@FPR{self.fpr:.0%} | right brand | box IoU>=0.5 |", "|---|---|---|---|---|"]
        for tier, s in [*self.tiers.items(), ("all positives", self.all_positive)]:
            lines.append(f"| {tier} | {s.listings} | {_fmt(s.flagged)} | {_fmt(s.right_brand)} | {_fmt(s.box_iou50)} |")
        h = self.hub
        lines.append(f"\nROC AUC {_fmt(self.roc_auc)}; threshold {self.threshold:.4f}; errors {self.errors}; hub: {h.reference} is the best match "
                     f"of {h.count} of {h.photos} photos that do not show it ({_fmt(h.share)}), {h.distinct} distinct references")
        return lines


def read_bench_results(path: str | Path) -> dict[str, ScanRow]:
    """``results.jsonl`` rows by listing id, each naming its best match (what scoring needs)."""
    out = {}
    for row in read_results(path, fix="scan the bench's listings/manifest.csv first"):
        if row.score is not None and row.brand is None and row.status != "error":
            # a scan names the best match only at or above its review threshold: right brand and box would read as misses
            raise MarkguardError(f"{path}: listing {row.listing_id}: a score without its best match; scan with --flag-threshold -1 "
                                 "--review-threshold -1 so that every row names its best match (the benchmark sets its own threshold)")
        out[row.listing_id] = row
    return out


def score_bench(results_path: str | Path, truth_path: str | Path, *, fpr: float = FPR) -> BenchScore:
    """Score a scan of the bench's listings against its truth (module docstring)."""
    truth = read_truth(truth_path)
    results = read_bench_results(results_path)
    lacking = [lid for lid in truth if lid not in results]
    if lacking:
        raise MarkguardError(f"{results_path}: no row for {len(lacking)} of the bench's {len(truth)} listings (first: {lacking[0]}); "
                             "scan the whole listings/manifest.csv")
    ids = list(truth)
    rows = [results[i] for i in ids]
    score = np.array([r.score if r.status != "error" and r.score is not None else -np.inf for r in rows], dtype=np.float64)
    tier = np.array([truth[i].tier for i in ids])
    neg = np.isin(tier, NEGATIVE_TIERS)
    pos = np.isin(tier, POSITIVE_TIERS)
    if not neg.any() or not pos.any():
        raise MarkguardError(f"{truth_path}: needs listings of a positive tier ({', '.join(POSITIVE_TIERS)}) and a negative one ({', '.join(NEGATIVE_TIERS)})")
    t = threshold_at_fpr(score[neg], fpr)
    flagged = score >= t
    right = np.array([r.status != "error" and r.brand is not None and r.brand == truth[i].brand for i, r in zip(ids, rows)]) & pos
    boxed = np.array([bool(r.box) and truth[i].box is not None and iou(r.box, truth[i].box) >= IOU_HIT for i, r in zip(ids, rows)])

    def tier_score(sel: np.ndarray, positive: bool) -> TierScore:
        n = int(sel.sum())
        if not n:
            return TierScore(0, None, None, None)
        named = sel & flagged & right
        return TierScore(n, float(flagged[sel].mean()), float(named.sum() / n) if positive else None,
                         float(boxed[named].mean()) if positive and named.any() else None)

    tiers = {name: tier_score(tier == name, name in POSITIVE_TIERS) for name in TIERS}
    band = np.array([truth[i].band or "" for i in ids])
    bands = {}
    if band.any():
        for group, (members, positive) in BAND_GROUPS.items():
            in_group = np.isin(tier, members)
            bands[group] = {b: tier_score(in_group & (band == b), positive) for b in BANDS if (in_group & (band == b)).any()}
    finite = np.where(np.isfinite(score), score, -1e9)  # an error row ranks below every real score
    return BenchScore(float(t), fpr, roc_auc(finite[pos], finite[neg]), int(pos.sum()), int(neg.sum()),
                      sum(r.status == "error" for r in rows), tiers, tier_score(pos, True),
                      hub_figure([(truth[i].brand if truth[i].tier in POSITIVE_TIERS else None, r) for i, r in zip(ids, rows)]), bands)


def band_table(score: dict, names: list[str] | None = None, extra: list[dict] = ()) -> list[str]:
    """Per size band (columns), one row per group of ``score["bands"]`` (a BenchScore's JSON): 'TPR / right brand (n)' for
    positives, 'FPR (n)' for unregistered marks. ``extra``: more scores' JSON, their rows named by ``names`` (bench tables
    put several runs in one table)."""
    runs = [score, *extra]
    names = names or [""] * len(runs)
    present = [b for b in BANDS if any(b in g for r in runs for g in r.get("bands", {}).values())]
    if not present:
        return []
    lines = ["| " + " | ".join(["size band (box long side / short side)", *present]) + " |", "|---|" + "---|" * len(present)]
    for name, r in zip(names, runs):
        for group, cells in r.get("bands", {}).items():
            positive = BAND_GROUPS.get(group, ((), True))[1]
            row = []
            for b in present:
                c = cells.get(b)
                if not c:
                    row.append("–")
                elif positive:
                    row.append(f"{_fmt2(c['flagged'])} / {_fmt2(c['right_brand'])} ({c['listings']})")
                else:
                    row.append(f"FPR {_fmt2(c['flagged'])} ({c['listings']})")
            label = f"{name}: {group}" if name else group
            lines.append(f"| {label}{' TPR / right' if positive else ''} | " + " | ".join(row) + " |")
    return lines


def hub_figure(pairs: list[tuple[str | None, ScanRow]], top: int = 5) -> Hub:
    """``pairs``: (registered brand the photo shows or None, its result row). Counts the best matches of photos that do not show them."""
    return hub_of((f"{row.brand}/{row.mark}" for shown, row in pairs if row.status != "error" and row.brand is not None and row.brand != shown), top)


def evaluate_bench(bench: str | Path, out_dir: str | Path, *, model: str | Path | None = None, device: str = "auto",
                   scan_options: dict | None = None, write_card: bool = False, log=print) -> dict:
    """``markguard eval --bench``: index ``bench/gallery`` with the model, scan ``bench/listings``, score; writes ``OUT/real.json``."""
    bench, out_dir = Path(bench), Path(out_dir)
    for need in ("gallery", "listings/manifest.csv", "truth.csv"):
        if not (bench / need).exists():
            raise MarkguardError(f"{bench}: no {need}; build the bench with `markguard data realbench`")
    model_dir = resolve_model_dir(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"eval: indexing {bench / 'gallery'} with {model_dir}")
    build_index(bench / "gallery", out_dir / "index", model=model_dir, kind="flat", device=device)
    # every row names its best match by similarity: the benchmark sets its own threshold, at FPR 1% of its negatives
    # (the shipped combiner's probability is measured by benchmarks/fit_defaults.py)
    opts = ScanOptions(device=device, flag=-1.0, review=-1.0, **{"combiner": None, **(scan_options or {})})
    t0 = time.perf_counter()
    summary = run_scan(bench / "listings" / "manifest.csv", [out_dir / "index"], out_dir / "scan", model=model_dir, opts=opts,
                       progress=False, resume=(out_dir / "scan").exists())
    seconds = time.perf_counter() - t0
    score = score_bench(out_dir / "scan" / "results.jsonl", bench / "truth.csv")
    bench_info = json.loads((bench / "bench.json").read_text()) if (bench / "bench.json").exists() else {}
    card = load_card(model_dir)
    metrics = {"model": str(model_dir), "fingerprint": card.fingerprint, "bench": str(bench),
               "bench_sources": bench_info.get("sources"), "listings_per_tier": bench_info.get("listings_per_tier"),
               "brands": len(bench_info.get("gallery_brands", [])), "images_per_s": summary.get("images_per_s"),
               "seconds": round(seconds, 1), "scan_options": {k: v for k, v in (scan_options or {}).items()},
               # what the scan did by default: verification (where OpenCV is installed), the card's second looks, the index's bank
               "scan": {"verify": bool(summary["options"]["verify"]), "looks": resolve_preprocessing(card).looks.per_photo,
                        "bank": summary["indexes"][0].get("bank")}, **score.to_json()}
    atomic_write_text(out_dir / "real.json", json.dumps(metrics, indent=2))
    log("\n".join(score.table()))
    log("\n".join(score.band_table()))
    if write_card:
        card.metrics = {**card.metrics, "real": headline(metrics)}
        atomic_write_text(Path(model_dir) / CARD, json.dumps(dataclasses.asdict(card), indent=2))
    log(f"eval: -> {out_dir / 'real.json'}")
    return metrics


def headline(metrics: dict) -> dict:
    """What the model card keeps of a bench run: per tier TPR / right brand / box IoU, AUC, the hub, the data."""
    return {"data": "real photographs, devicon colour marks of brands absent from training (markguard data realbench)",
            "bench_sources": metrics.get("bench_sources"), "brands": metrics.get("brands"),
            "listings_per_tier": metrics.get("listings_per_tier"), "scan": metrics.get("scan"), "fpr": metrics["fpr"], "roc_auc": metrics["roc_auc"],
            "tiers": {t: {k: s[k] for k in ("flagged", "right_brand", "box_iou50")} for t, s in metrics["tiers"].items()},
            # per size band of the mark (box long side over the photo's short side): plain copies and every positive
            "bands": {g: {b: {k: s[k] for k in ("listings", "flagged", "right_brand")} for b, s in cells.items()}
                      for g, cells in metrics.get("bands", {}).items()},
            "hub": {k: metrics["hub"][k] for k in ("reference", "count", "share", "photos")}}


def _fmt(x) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"


def _fmt2(x) -> str:
    return "–" if x is None or x != x else f"{x:.2f}"


def _round(x):
    if isinstance(x, float):
        return None if x != x else round(x, 4)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v) for v in x]
    return x
