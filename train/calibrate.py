"""Calibration: choose the scan's flag and review thresholds (globally and per brand) for a target FPR or precision."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from markguard.checkpoint import CARD, load_card
from markguard.datasets.decode import load_mark
from markguard.datasets.tables import read_jsonl
from markguard.datasets.registry import load_gallery, split_brands
from markguard.datasets.synth import Backgrounds, SynthConfig, SynthMark, make_listing, make_marks
from markguard.errors import MarkguardError
from markguard.fsio import atomic_write_text
from markguard.infer.decide import Policy
from markguard.infer.embed import embed_references
from markguard.infer.index import MarkIndex
from markguard.infer.results import read_summary
from markguard.infer.scan import ScanOptions, Searcher, load_searchers, scan_rows
from markguard.train.rates import roc_auc, threshold_at_fpr, threshold_at_precision


@dataclass
class Scored:
    score: float  # best similarity in the listing
    positive: bool  # shows a registered mark
    correct: bool  # the best match is one of the marks it shows


def thresholds_for(scored: list[Scored], target_fpr: float) -> dict:
    """Flag at ``target_fpr`` on the negatives, review at five times that; with the rates they give."""
    pos = np.array([s.score for s in scored if s.positive], dtype=np.float64)
    neg = np.array([s.score for s in scored if not s.positive], dtype=np.float64)
    if len(neg) == 0 or len(pos) == 0:
        return {"flag": 0.6, "review": 0.5, "per_brand": {}, "metrics": {}}

    flag, review = threshold_at_fpr(neg, target_fpr), threshold_at_fpr(neg, min(1.0, 5 * target_fpr))
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


# --------------------------------------------------------------------------- calibration from a labelled scan

@dataclass
class Calibration:
    """Thresholds chosen on a labelled scan, and what they give on it."""

    flag: float
    review: float
    per_brand: dict[str, float]
    report: dict

    def thresholds(self) -> dict:
        return {"flag": round(self.flag, 4), "review": round(self.review, 4), "per_brand": {b: round(t, 4) for b, t in self.per_brand.items()}}


def _choose(scores, positive, good, target_fpr, target_precision) -> tuple[float | None, float | None]:
    """(flag, review) for one score population: at the FPR target (review at 5x it) or the precision target
    (review where precision is 1 - 5 x the allowed share of mistakes)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    if target_fpr is not None:
        neg = scores[~positive]
        if len(neg) == 0:
            return None, None
        return threshold_at_fpr(neg, target_fpr), threshold_at_fpr(neg, min(1.0, 5 * target_fpr))
    return (threshold_at_precision(scores, good, target_precision),
            threshold_at_precision(scores, good, max(0.0, 1 - 5 * (1 - target_precision))))


def _raw(m) -> float:
    """A match's similarity as the thresholds read it: raw, where a background bank normalised its score (infer/decide.py)."""
    from markguard.infer.decide import Policy

    return Policy(1.0, 1.0, evidence_rules=False).base(m)


def listing_scores(rows, truth: dict, authorized: dict[str, list[str]]) -> list[dict]:
    """Per listing: the best score for every brand searched, which brands it shows, and the seller's allowed brands.
    ``truth`` is keyed by (listing_id, image), or by (listing_id, None) for a truth that does not name images (CSV)."""
    out = []
    for row in rows:
        t = truth.get((row.listing_id, row.image)) or truth.get((row.listing_id, None))
        if t is None or row.status == "error":
            continue
        allowed = {b for b, sellers in authorized.items() if t.get("seller_id") in sellers}
        shown = {m["brand"] for m in t["marks"] if m["registered"]} - allowed
        best: dict[str, float] = {}
        for m in row.matches:
            if m.brand not in allowed and m.mark is not None:
                best[m.brand] = max(best.get(m.brand, -1.0), _raw(m))
        out.append({"listing": row.listing_id, "best": best, "shown": shown, "allowed": allowed})
    return out


def calibrate_listings(scored: list[dict], brands: list[str], *, target_fpr: float | None = None,
                       target_precision: float | None = None, min_positives: int = 5) -> Calibration:
    """Global and per-brand thresholds from :func:`listing_scores`.

    Globally a listing scores its best match; it is a true detection when that match's brand is one
    it shows. Per brand, a listing scores its best match of that brand, positive when it shows the
    brand. A brand gets its own threshold only with ``min_positives`` positives and enough negatives
    to resolve the FPR target; otherwise the global one applies (the report says which).
    """
    if (target_fpr is None) == (target_precision is None):
        raise MarkguardError("give exactly one of --target-fpr and --target-precision")
    if not scored:
        raise MarkguardError("no scanned listing matches the truth file (listing_id + image); is it the truth of this scan?")
    g_scores, g_pos, g_good = [], [], []
    for s in scored:
        best = {b: v for b, v in s["best"].items() if b not in s["allowed"]}  # an authorized seller's own brand is never flagged
        top = max(best.items(), key=lambda kv: kv[1]) if best else (None, -1.0)
        g_scores.append(top[1])
        g_pos.append(bool(s["shown"]))
        g_good.append(top[0] in s["shown"])
    n_pos, n_neg = int(np.sum(g_pos)), int(len(g_pos) - np.sum(g_pos))
    if n_pos == 0 or (target_fpr is not None and n_neg == 0):
        raise MarkguardError(f"the labelled scan has {n_pos} positive and {n_neg} negative listings; calibration needs both")
    flag, review = _choose(g_scores, g_pos, g_good, target_fpr, target_precision)
    if flag is None:
        raise MarkguardError(f"no threshold reaches precision {target_precision} on this scan; lower --target-precision or improve the model")
    review = min(review if review is not None else flag, flag)
    per_brand, brand_report = {}, {}
    for b in brands:
        rows = [s for s in scored if b not in s["allowed"]]
        sc = [s["best"].get(b, -1.0) for s in rows]
        pos = [b in s["shown"] for s in rows]
        n_b, neg_b = int(np.sum(pos)), len(pos) - int(np.sum(pos))
        enough_neg = target_fpr is None or neg_b * target_fpr >= 1
        t = _choose(sc, pos, pos, target_fpr, target_precision)[0] if n_b >= min_positives and enough_neg else None
        if t is not None:
            per_brand[b] = t
        used = t if t is not None else flag
        arr, parr = np.asarray(sc), np.asarray(pos, dtype=bool)
        brand_report[b] = {"positives": n_b, "negatives": neg_b, "threshold": round(used, 4), "own_threshold": t is not None,
                           "tpr": round(float((arr[parr] >= used).mean()), 4) if n_b else None,
                           "fpr": round(float((arr[~parr] >= used).mean()), 4) if neg_b else None}
    gs, gp, gg = np.asarray(g_scores), np.asarray(g_pos), np.asarray(g_good)
    hit = gs >= flag
    report = {"listings": len(scored), "positives": n_pos, "negatives": n_neg,
              "target": {"fpr": target_fpr} if target_fpr is not None else {"precision": target_precision},
              "auc": round(roc_auc(gs[gp], gs[~gp]), 4) if n_neg else None,
              "at_flag": {"tpr": round(float(hit[gp].mean()), 4), "tpr_right_brand": round(float((hit & gg)[gp].mean()), 4),
                          "fpr": round(float(hit[~gp].mean()), 4) if n_neg else None,
                          "precision": round(float((hit & gg).sum() / max(1, hit.sum())), 4)},
              "per_brand": brand_report}
    return Calibration(flag, review, per_brand, report)


def read_labels(path: str | Path) -> dict:
    """A labelled sample's truth, keyed as :func:`listing_scores` reads it: a scan's ``truth.jsonl`` (listing_id, image,
    seller_id, marks[{brand, registered}]) or a CSV with columns listing_id and brand (empty for a clean listing; a
    bench's truth.csv, whose unregistered and negative tiers show no registered brand)."""
    from markguard.infer.combine import read_truth

    path = Path(path)
    if path.suffix.lower() == ".csv":
        return {(lid, None): {"listing_id": lid, "seller_id": None, "marks": [{"brand": b, "registered": True} for b in sorted(brands)]}
                for lid, brands in read_truth(path).items()}
    try:
        rows = list(read_jsonl(path))
        return {(t["listing_id"], t["image"]): t for t in rows}
    except (KeyError, TypeError) as e:
        raise MarkguardError(f"{path}: not a truth file ({type(e).__name__}: {e}); give truth.jsonl (listing_id, image, marks) "
                             "or a .csv with listing_id,brand") from None


MIN_SAMPLE = 50  # labelled listings of each kind below which thresholds are a guess, and calibrate says so


def sample_warning(report: dict, target_fpr: float | None) -> str | None:
    """One line saying why thresholds from this sample cannot be trusted, or None."""
    pos, neg = report["positives"], report["negatives"]
    why = []
    if pos < MIN_SAMPLE or neg < MIN_SAMPLE:
        why.append(f"{pos} positive and {neg} negative listings (label at least {MIN_SAMPLE} of each)")
    if target_fpr is not None and neg * target_fpr < 1:
        why.append(f"{neg} negatives cannot resolve an FPR of {target_fpr:g} (it needs {int(1 / target_fpr)})")
    if not why:
        return None
    return "calibrate: warning: a small sample, " + "; ".join(why) + ": these thresholds are a guess, not a calibration"


def installed_package(path: str | Path) -> bool:
    """Whether ``path`` lies inside the installed markguard's shipped weights (which calibration never writes)."""
    from markguard.checkpoint import DEFAULT_MODEL_DIR

    p = Path(path).resolve()
    return p == DEFAULT_MODEL_DIR.resolve() or DEFAULT_MODEL_DIR.resolve() in p.parents


def refuse_installed(path: str | Path, what: str) -> None:
    if installed_package(path):
        raise MarkguardError(f"{path}: inside the installed markguard's shipped weights; calibration writes {what} to a folder of "
                             "yours: pass --out DIR (or leave it out to write beside your index)")


def calibrate_results(results_dir: str | Path, truth_path: str | Path, model_dir: str | Path | None = None, *,
                      target_fpr: float | None = None, target_precision: float | None = None, device: str = "cpu",
                      min_positives: int = 5, out: str | Path | None = None, write: bool = True, log=print) -> Calibration:
    """Choose thresholds from a finished scan in ``results_dir`` and its truth, and write them to ``out`` (a folder or a
    .json path) or, by default, beside the scan's first index (``INDEX/thresholds.json``, which scans with it then apply);
    never into the installed package.

    The scan's results keep only matches above its review threshold, which hides the scores that
    calibration must see; so the scan's input is scanned again (same index, same model) with every
    threshold at -1, and every brand's best score in each listing is kept.
    """
    from markguard.infer.decide import THRESHOLDS_FILE

    results_dir = Path(results_dir)
    summary = read_summary(results_dir, fix="give the output folder of a finished `markguard scan`")
    target = Path(out) if out is not None else Path(summary["indexes"][0]["path"]) / THRESHOLDS_FILE
    refuse_installed(target, "thresholds")
    if model_dir is None:
        model_dir = summary["indexes"][0].get("model")  # the scan's model (None: the shipped default)
    card = load_card(model_dir) if model_dir is not None else None
    if card is None:
        from markguard.checkpoint import DEFAULT_MODEL_DIR

        card = load_card(DEFAULT_MODEL_DIR)
    if summary["model"]["fingerprint"] != card.fingerprint:
        raise MarkguardError(f"{results_dir}: scanned with model {summary['model']['fingerprint']}, not {model_dir} ({card.fingerprint}); calibrate with the scan's model")
    truth = read_labels(truth_path)
    searchers = load_searchers([i["path"] for i in summary["indexes"]], model_dir, device)
    authorized = {}
    for s in searchers:
        authorized |= {b: list(m.get("authorized_sellers") or []) for b, m in s.brands.items()}
    brands = sorted({r.brand for s in searchers for r in s.index.records()})
    opts = ScanOptions(device=device, workers=0, k=10, max_matches=10_000, verify=False, ocr=False, combiner=None,
                       shard=tuple(summary["options"]["shard"]) if summary["options"].get("shard") else None)
    rows = scan_rows(summary["input"], searchers, Policy(-1.0, -1.0, evidence_rules=False), opts)
    cal = calibrate_listings(listing_scores(rows, truth, authorized), brands, target_fpr=target_fpr,
                             target_precision=target_precision, min_positives=min_positives)
    warning = sample_warning(cal.report, target_fpr)
    cal.report["warning"] = warning
    if warning:
        import sys

        print(warning, file=sys.stderr)
    log(f"calibrate: flag {cal.flag:.4f}, review {cal.review:.4f}, {len(cal.per_brand)} brand threshold(s); at flag {cal.report['at_flag']}")
    cal.report["written"] = None
    if write:
        from markguard.infer.decide import save_thresholds

        path = save_thresholds(target, cal.thresholds(), model_fingerprint=card.fingerprint,
                               fitted={"source": f"{results_dir} + {truth_path}", **{k: v for k, v in cal.report.items() if k != "per_brand"}})
        cal.report["written"] = str(path)
    return cal


def write_thresholds(model_dir: str | Path, cal: Calibration, *, source: str) -> None:
    """Put the thresholds into the model card beside the weights; they are not part of the fingerprint,
    so indexes built with the model stay valid."""
    card = load_card(model_dir)
    card.thresholds = cal.thresholds()
    card.metrics = {**card.metrics, "calibration": {**cal.report, "source": source}}
    atomic_write_text(Path(model_dir) / CARD, json.dumps(dataclasses.asdict(card), indent=2))
