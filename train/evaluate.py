"""Evaluation: a scan against ground truth (``score_scan``), and a model on held-out brands (``evaluate_model``: retrieval, detection, plots)."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from markguard.boxes import iou
from markguard.checkpoint import CARD, load_checkpoint, resolve_model_dir
from markguard.datasets.decode import load_mark
from markguard.datasets.tables import read_jsonl
from markguard.datasets.registry import load_gallery
from markguard.datasets.synth import Backgrounds, SynthConfig, SynthMark, make_listing, make_marks, paste_mark
from markguard.datasets.transforms import letterbox
from markguard.errors import MarkguardError
from markguard.fsio import atomic_write_text
from markguard.infer.decide import Policy
from markguard.infer.embed import embed_references, embed_regions
from markguard.infer.index import MarkIndex
from markguard.infer.results import read_results
from markguard.infer.scan import ScanOptions, Searcher, scan_rows
from markguard.train.rates import roc_auc, threshold_at_fpr, tpr_at_fpr


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




def score_scan(results_path: str | Path, truth_path: str | Path, *, statuses=("flag",), authorized: dict[str, list[str]] | None = None) -> ScanScore:
    """Compare ``results.jsonl`` with a synth ``truth.jsonl`` (matched by listing_id + image)."""
    truth = {(t["listing_id"], t["image"]): t for t in read_jsonl(truth_path)}
    authorized = authorized or {}
    n = pos = flagged = tp = right = boxed = errors = 0
    for row in read_results(results_path):
        t = truth.get((row.listing_id, row.image))
        if t is None:
            continue
        n += 1
        shown = [m for m in t["marks"] if m["registered"] and t.get("seller_id") not in authorized.get(m["brand"], [])]
        is_pos = bool(shown)
        pos += is_pos
        errors += row.status == "error"
        if row.status in statuses:
            flagged += 1
            if is_pos:
                tp += 1
                hit = [m for m in shown if m["mark"] == row.mark]
                right += bool(hit)
                if hit and row.box:
                    boxed += max(iou(row.box, m["box"]) for m in hit) >= 0.5
    return ScanScore(n, pos, flagged, tp, tp / flagged if flagged else 0.0, tp / pos if pos else 0.0,
                     right / tp if tp else 0.0, boxed / right if right else 0.0, errors)


# --------------------------------------------------------------------------- open-set evaluation of a model

@dataclass
class EvalConfig:
    """What ``markguard eval`` measures on: synthetic listings of the held-out brands' marks."""

    queries_per_mark: int = 4  # each mark pasted into this many photos, for retrieval
    listings: int = 200  # labelled listing photos for detection
    listing_size: tuple[int, int] = (480, 360)
    scale: tuple[float, float] = (0.2, 0.6)  # retrieval queries: mark long side over the photo's short side
    listing_scale: tuple[float, float] = (0.08, 0.7)  # detection listings: small, medium and large marks
    backgrounds: str | None = None  # real photos to paste into; procedural when unset
    seed: int = 0
    plots: bool = True


def heldout_marks(card, gallery: str | Path | None):
    """The marks to evaluate on: all of ``gallery``, else the brands the card says were held out of training."""
    if gallery is None:
        held = card.training.get("holdout_brands") or []
        src = card.training.get("gallery")
        if not held or not src:
            raise MarkguardError("the model card names no held-out brands (train with holdout_brands=N); pass --gallery with brands the model never saw")
        gallery, keep = src, set(held)
    else:
        keep = None
    g = load_gallery(gallery)
    marks = [SynthMark(r.brand, r.mark, load_mark(r.path), "mark") for r in g.marks if keep is None or r.brand in keep]
    if len({m.brand for m in marks}) < 2:
        raise MarkguardError(f"{gallery}: evaluation needs marks of at least 2 brands, found {len({m.brand for m in marks})}")
    return marks, g


@torch.no_grad()
def _query_embeddings(model, card, marks, ec: EvalConfig, device: str) -> tuple[np.ndarray, np.ndarray]:
    """Each mark pasted into ``queries_per_mark`` photos, embedded by the region of its true box (as a scan pools it)."""
    rng = np.random.default_rng((ec.seed, 1))
    bgs = Backgrounds(ec.backgrounds)
    xs, boxes, labels = [], [], []
    for li, m in enumerate(marks):
        for _ in range(ec.queries_per_mark):
            w, h = ec.listing_size if rng.random() < 0.5 else ec.listing_size[::-1]
            img = bgs.sample(w, h, rng)
            box = paste_mark(img, m.image, rng, scale=float(rng.uniform(*ec.scale)))
            if box is None:  # nothing visible to paste (a blank mark): no query for it
                continue
            lb = letterbox(img, card.scan_size, card.mean, card.std)
            xs.append(lb.tensor)
            boxes.append(torch.tensor([box], dtype=torch.float32) * lb.factor)
            labels.append(li)
    out = []
    for i in range(0, len(xs), 16):
        out.append(embed_regions(model, card, torch.stack(xs[i : i + 16]), boxes[i : i + 16], device=device).vectors.float().cpu().numpy())
    return np.concatenate(out), np.asarray(labels)


def retrieval_metrics(queries: np.ndarray, q_labels: np.ndarray, refs: np.ndarray, r_labels: np.ndarray) -> dict:
    """Recall@1/5 by brute force, and MAP@R and precision@1 from pytorch-metric-learning's AccuracyCalculator."""
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    sims = queries @ refs.T
    ranked = np.argsort(-sims, axis=1)
    hits = r_labels[ranked] == q_labels[:, None]
    acc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count", device=torch.device("cpu"))
    pml = acc.get_accuracy(torch.from_numpy(queries), torch.from_numpy(q_labels), torch.from_numpy(refs), torch.from_numpy(r_labels),
                           ref_includes_query=False)
    return {"recall@1": float(hits[:, :1].any(1).mean()), "recall@5": float(hits[:, :5].any(1).mean()),
            "map@r": float(pml["mean_average_precision_at_r"]), "precision@1": float(pml["precision_at_1"]), "_sims": sims, "_hits": hits}


# mark size: its box's long side over the photo's short side
SIZE_BUCKETS = (("small", 0.0, 0.15), ("medium", 0.15, 0.4), ("large", 0.4, float("inf")))


def size_bucket(box, image_size: tuple[int, int]) -> str:
    rel = max(box[2] - box[0], box[3] - box[1]) / min(image_size)
    return next(name for name, lo, hi in SIZE_BUCKETS if lo <= rel < hi)


def localisation_metrics(listings: list[dict], threshold: float) -> dict:
    """Box quality and detection by mark size, at the operating ``threshold`` (the score at FPR 1%).

    ``listings``: one dict per scanned photo, ``{"size": (w, h), "marks": [(brand, box), ...]
    (registered marks shown), "matches": [Match, ...], "score": float}``. Per size bucket:

    - ``marks``: registered marks of that size shown;
    - ``hit_rate``: share of them matched by a candidate of the right brand scoring >= threshold
      whose box has IoU >= 0.5 with the mark's box;
    - ``box_iou50``: among marks identified (right brand, >= threshold), the share with IoU >= 0.5;
    - ``mean_iou``: their mean IoU;
    - ``tpr@fpr1%``: positive listings whose largest shown mark is of that size, scoring >= threshold.
    """
    out = {name: {"marks": 0, "identified": 0, "boxed": 0, "iou_sum": 0.0, "listings": 0, "detected": 0} for name, _, _ in SIZE_BUCKETS}
    for lst in listings:
        if not lst["marks"]:
            continue
        largest = max(lst["marks"], key=lambda m: max(m[1][2] - m[1][0], m[1][3] - m[1][1]))
        b = out[size_bucket(largest[1], lst["size"])]
        b["listings"] += 1
        b["detected"] += lst["score"] is not None and lst["score"] >= threshold
        for brand, box in lst["marks"]:
            c = out[size_bucket(box, lst["size"])]
            c["marks"] += 1
            ious = [iou(m.box, box) for m in lst["matches"] if m.brand == brand and m.score >= threshold and m.box]
            if ious:
                c["identified"] += 1
                c["iou_sum"] += max(ious)
                c["boxed"] += max(ious) >= 0.5
    result = {}
    for name, b in out.items():
        result[name] = {"marks": b["marks"], "identified": b["identified"],
                        "hit_rate": b["boxed"] / b["marks"] if b["marks"] else None,
                        "box_iou50": b["boxed"] / b["identified"] if b["identified"] else None,
                        "mean_iou": b["iou_sum"] / b["identified"] if b["identified"] else None,
                        "listings": b["listings"], "tpr@fpr1%": b["detected"] / b["listings"] if b["listings"] else None}
    ident = sum(b["identified"] for b in out.values())
    result["all"] = {"identified": ident, "box_iou50": sum(b["boxed"] for b in out.values()) / ident if ident else None}
    return result


def evaluate_model(model_dir: str | Path | None, out_dir: str | Path, *, gallery: str | Path | None = None,
                   ec: EvalConfig | None = None, device: str = "cpu", write_card: bool = False, log=print) -> dict:
    """Open-set retrieval and listing-level detection on brands the model did not train on; writes ``metrics.json`` (+ PNG plots).

    Retrieval: held-out marks pasted into photos, pooled by their true box, against the clean
    references (mark-level labels). Detection: labelled synthetic listings (held-out marks,
    unregistered distractors, nothing) scanned against an index of the references.
    """
    ec = ec or EvalConfig()
    model_dir = resolve_model_dir(model_dir)
    model, card = load_checkpoint(model_dir, device=device)
    marks, _ = heldout_marks(card, gallery)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"eval: {len(marks)} marks of {len({m.brand for m in marks})} held-out brands")

    refs = embed_references(model, card, [m.image for m in marks], device=device)
    r_labels = np.arange(len(marks))
    q, q_labels = _query_embeddings(model, card, marks, ec, device)
    ret = retrieval_metrics(q, q_labels, refs, r_labels)
    sims, hits = ret.pop("_sims"), ret.pop("_hits")
    same = q_labels[:, None] == r_labels[None, :]  # ``hits`` is in rank order; this is in reference order
    genuine = sims[same].astype(np.float64)  # query vs its own mark
    impostor = np.where(same, -np.inf, sims).max(1)  # query vs the closest other mark

    # detection on labelled listings
    index = MarkIndex.build(refs, [{"brand": m.brand, "mark": m.mark, "source": ""} for m in marks], fingerprint=card.fingerprint, kind="flat")
    distractors = make_marks(6, 1, seed=ec.seed + 70_000, prefix="eval-other")
    rng = np.random.default_rng((ec.seed, 2))
    sc = SynthConfig(size=ec.listing_size, scale=ec.listing_scale, p_near_match=0.0)
    truth, placed = {}, {}
    det_scores, det_pos, det_right, det_brand, det_rows = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="markguard-eval-") as tmp:
        bgs = Backgrounds(ec.backgrounds)
        for i in range(ec.listings):
            lst = make_listing(rng, marks, distractors, bgs, sc)
            lst.image.save(Path(tmp) / f"e{i:05d}.jpg", quality=90)
            truth[f"e{i:05d}"] = {m.brand for m in lst.marks if m.registered}
            placed[f"e{i:05d}"] = (lst.image.size, [(m.brand, m.box) for m in lst.marks if m.registered])
        searcher = Searcher("", Path(tmp), index, model, card, {})
        for row in scan_rows(tmp, [searcher], Policy(-1.0, -1.0), ScanOptions(device=device, workers=0, batch_size=8)):
            if row.status == "error":
                continue
            shown = truth[row.listing_id]
            best = row.matches[0] if row.matches else None
            det_scores.append(row.score if row.score is not None else -1.0)
            det_pos.append(bool(shown))
            det_right.append(best is not None and best.brand in shown)
            det_brand.append(sorted(shown))
            size, shown_marks = placed[row.listing_id]
            det_rows.append({"size": size, "marks": shown_marks, "matches": row.matches, "score": row.score})
    s, p, r = np.asarray(det_scores), np.asarray(det_pos, dtype=bool), np.asarray(det_right, dtype=bool)
    detection = {"listings": int(len(s)), "positives": int(p.sum()), "negatives": int((~p).sum()),
                 "roc_auc": roc_auc(s[p], s[~p]),
                 "tpr@fpr1%": tpr_at_fpr(s[p], s[~p], 0.01), "tpr@fpr0.1%": tpr_at_fpr(s[p], s[~p], 0.001),
                 # a detection that names a brand the photo does not show is not a hit for its owner
                 "tpr_right_brand@fpr1%": tpr_at_fpr(np.where(r, s, -np.inf)[p], s[~p], 0.01),
                 "note": "FPR 0.1% is resolved only with >= 1000 negatives" if (~p).sum() < 1000 else None}

    per_brand = {}
    brands = sorted({m.brand for m in marks})
    t1 = threshold_at_fpr(s[~p], 0.01) if (~p).any() else float("inf")
    for b in brands:
        qi = np.isin(q_labels, [i for i, m in enumerate(marks) if m.brand == b])
        bi = np.array([b in sb for sb in det_brand], dtype=bool)
        per_brand[b] = {"queries": int(qi.sum()), "recall@1": float(hits[qi, :1].any(1).mean()),
                        "listings": int(bi.sum()), "tpr@fpr1%": float((s[bi] >= t1).mean()) if bi.any() else None}
    localisation = localisation_metrics(det_rows, t1)
    metrics = {"model": str(model_dir), "fingerprint": card.fingerprint, "marks": len(marks), "brands": brands,
               "eval_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(ec).items()},
               "retrieval": ret, "detection": detection, "localisation": localisation, "per_brand": per_brand,
               "scores": {"genuine_mean": float(genuine.mean()), "impostor_mean": float(impostor.mean())}}
    metrics = _round(metrics)
    if ec.plots:
        metrics["plots"] = _plots(out_dir, s, p & r, ~p, genuine, impostor, log)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    if write_card:
        card.metrics = {**card.metrics, "heldout": {k: metrics[k] for k in ("retrieval", "detection", "localisation", "marks", "brands")}}
        atomic_write_text(Path(model_dir) / CARD, json.dumps(dataclasses.asdict(card), indent=2))
    log(f"eval: recall@1 {ret['recall@1']:.3f}, recall@5 {ret['recall@5']:.3f}, MAP@R {ret['map@r']:.3f}; "
        f"detection AUC {detection['roc_auc']:.3f}, TPR@FPR1% {detection['tpr@fpr1%']:.3f}; "
        f"boxes IoU>=0.5 {_fmt(localisation['all']['box_iou50'])}, TPR@FPR1% small/large "
        f"{_fmt(localisation['small']['tpr@fpr1%'])}/{_fmt(localisation['large']['tpr@fpr1%'])} -> {out_dir / 'metrics.json'}")
    return metrics


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _round(x):
    if isinstance(x, float):
        return None if x != x else round(x, 4)  # NaN (an empty population) is not JSON
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


def _plots(out_dir: Path, scores, good, neg, genuine, impostor, log) -> list[str]:
    """PR curve of listing detection and genuine/impostor histograms, as PNG (needs matplotlib: markguard[plots])."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError:
        log("eval: no plots (pip install 'markguard[plots]' for matplotlib)")
        return []
    order = np.argsort(-scores)
    tp = np.cumsum(good[order])
    flagged = np.arange(1, len(order) + 1)
    precision, recall = tp / flagged, tp / max(1, good.sum())
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(recall, precision)
    ax.set(xlabel="recall (right brand)", ylabel="precision", title="listing detection", xlim=(0, 1), ylim=(0, 1.02))
    fig.tight_layout()
    fig.savefig(out_dir / "pr_curve.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = np.linspace(-1, 1, 81)
    ax.hist(genuine, bins=bins, alpha=0.6, label="genuine (own mark)")
    ax.hist(impostor, bins=bins, alpha=0.6, label="impostor (closest other mark)")
    ax.set(xlabel="cosine similarity", ylabel="queries")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "score_histograms.png", dpi=100)
    plt.close(fig)
    return ["pr_curve.png", "score_histograms.png"]
