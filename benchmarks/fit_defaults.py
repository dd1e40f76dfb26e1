"""Fit the shipped default combiner and thresholds on the labelled real-photo bench, and report them on the half not fitted on.

One command, rerun whenever the default model changes:

    python benchmarks/fit_defaults.py --bench data/evidence-bench --model markguard/weights --every 3 --work data/evidence-work/fit

``--bench``: a real-photo bench with its wordmark tier (``markguard data realbench`` then ``markguard
data wordbench``): brands the model never trained on. Every ``--every``-th listing of each tier is
taken, and split in two halves (every other listing of each tier):

1. an index of the bench's gallery is built with ``--model`` (no background bank: the combiner reads
   the raw similarity, so it holds for indexes with or without one);
2. the listings are scanned once with every threshold off, verification (from ``--verify-from``) and
   OCR on, and the policy's evidence rules off, so every candidate and all its evidence is written;
3. a logistic combiner over similarity, verification and text is fitted on the **fit half**'s
   candidates; flag and review thresholds are chosen on the fit half, on its decisions as a scan
   makes them (the evidence rules of ``infer/decide.py`` applied): flag at the lowest probability
   where precision (flagged for the right brand) is at least ``--flag-precision`` (0.95), review where
   it is at least ``--review-precision`` (0.75); the same for similarity thresholds (``--no-combiner``);
4. with ``--write``, the combiner goes to ``MODEL/combiner.json`` and the card's ``thresholds`` name it
   with its digest and what it was fitted on;
5. the **report half** is scanned as a user scans, at the default settings (``run_scan`` with
   ``ScanOptions()``: the shipped combiner and thresholds), and SIFT + RANSAC scans the same
   listings; the table goes to stdout and ``WORK/report.json``.

Never run it on reserved data (see the repository's rules): the bench's sources are devicon,
simple-icons and the Debian photo packages it was built from.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

SIGNALS = ["similarity", "geometry", "text"]
CODE_VERSION = 1  # bump when the evidence a scan writes changes: a cached evidence scan is then redone  # no bank-normalised similarity: the default must hold for any index


def subset(bench: Path, every: int, out: Path) -> tuple[dict, list[list[str]]]:
    """Every ``every``-th listing of each tier (hard links under ``out``): the truth by id and the two halves (lists of ids)."""
    from markguard.datasets.wordbench import read_truth

    truth = read_truth(bench / "truth.csv")
    by_tier: dict[str, list[str]] = {}
    for lid, row in truth.items():
        by_tier.setdefault(row.tier, []).append(lid)
    chosen = {t: ids[::every] for t, ids in by_tier.items()}
    halves = [[i for ids in chosen.values() for i in ids[h::2]] for h in (0, 1)]
    for name, ids in zip(("fit", "report"), halves):
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        for lid in ids:
            dst = d / f"{lid}.jpg"
            if not dst.exists():
                try:
                    os.link(bench / "listings" / f"{lid}.jpg", dst)
                except OSError:
                    shutil.copy2(bench / "listings" / f"{lid}.jpg", dst)
        with open(d / "manifest.csv", "w", newline="") as f:
            csv.writer(f).writerows([["listing_id", "image_path"], *([i, f"{i}.jpg"] for i in ids)])
    return truth, halves


def evidence_scan(manifest: Path, index: Path, model, verify_from: float, out: Path) -> tuple[dict, dict]:
    """Every candidate of every listing with all its evidence (thresholds and evidence rules off); listing id -> matches."""
    from markguard.infer.decide import Policy
    from markguard.infer.options import StageTimes
    from markguard.infer.scan import ScanOptions, load_searchers, scan_rows

    from markguard.infer.results import read_results

    searchers = load_searchers([index], model, "cpu")
    key = {"fingerprint": searchers[0].card.fingerprint, "verify_from": verify_from,
           "manifest": Path(manifest).read_text(), "code": CODE_VERSION}
    if (out / "key.json").is_file() and json.loads((out / "key.json").read_text()) == key:  # the same scan done before: reuse it
        info = json.loads((out / "info.json").read_text())
        return {r.listing_id: r.matches for r in read_results(out / "results.jsonl") if r.status != "error"}, info
    opts = ScanOptions(workers=1, verify=True, verify_from=verify_from, ocr=True, combiner=None, device="cpu")
    times = StageTimes()
    t0 = time.perf_counter()
    rows = {}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "w") as f:
        for row in scan_rows(manifest, searchers, Policy(-1.0, -1.0, evidence_rules=False), opts, times=times):
            rows[row.listing_id] = row
            f.write(json.dumps(row.to_json()) + "\n")
    info = {"seconds": time.perf_counter() - t0, "stage_seconds": times.seconds, "fingerprint": searchers[0].card.fingerprint,
            "verify_from": verify_from}
    (out / "info.json").write_text(json.dumps(info))
    (out / "key.json").write_text(json.dumps(key))
    return {lid: r.matches for lid, r in rows.items() if r.status != "error"}, info


def _label(truth, lid: str, brand: str) -> bool:
    from markguard.datasets.wordbench import shows

    return shows(truth[lid]) == brand


def _views(matches, combiner) -> list[SimpleNamespace]:
    """The matches as ``Policy.value`` reads them, with the combiner's probability and its probability unchecked."""
    from markguard.infer.evidence import candidate_from_json

    out = [SimpleNamespace(brand=m.brand, mark=m.mark, score=m.score, box=m.box, index=m.index, evidence=m.evidence or {},
                           probability=None, unchecked=None) for m in matches]
    if combiner is not None and out:
        cands = [candidate_from_json(m.to_json()) for m in matches]
        for v, p, u in zip(out, combiner.probabilities(cands), combiner.unchecked(cands)):
            v.probability, v.unchecked = float(p), float(u)
    return out


def decisions(ids, views, truth, policy) -> dict:
    """Each listing's (status, decided brand, decided value) under ``policy``."""
    out = {}
    for lid in ids:
        status, m = policy.decide(views[lid], None)
        out[lid] = (status, m.brand if m is not None else None, policy.value(m) if m is not None else -1.0)
    return out


def precision_at(ids, views, truth, policy, level: str) -> tuple[float, int]:
    d = decisions(ids, views, truth, policy)
    hit = [lid for lid in ids if d[lid][0] == "flag" or (level == "review" and d[lid][0] == "review")]
    right = sum(_label(truth, lid, d[lid][1]) for lid in hit)
    return (right / len(hit) if hit else 1.0), len(hit)


def choose(ids, views, truth, make_policy, grid, target: float, level: str, fixed: float | None = None) -> float:
    """The lowest threshold of ``grid`` from which on (every higher one too) precision at ``level`` is at least ``target``."""
    ok = None
    for t in sorted(grid, reverse=True):
        policy = make_policy(t) if level == "flag" else make_policy(fixed, t)
        p, n = precision_at(ids, views, truth, policy, level)
        if p < target:
            break
        ok = t
    if ok is None:
        return float(max(grid))
    return float(ok)


def fit(matches: dict, truth: dict, halves, fingerprint: str, args) -> tuple[object, dict]:
    from markguard.infer.combine import fit_combiner
    from markguard.infer.decide import Policy
    from markguard.infer.evidence import candidate_from_json

    fit_ids = [i for i in halves[0] if i in matches]
    cands = [candidate_from_json(m.to_json()) for i in fit_ids for m in matches[i]]
    labels = [_label(truth, i, m.brand) for i in fit_ids for m in matches[i]]
    combiner = fit_combiner(cands, labels, model_fingerprint=fingerprint, signals=SIGNALS,
                            source=f"{args.bench} (fit half of every {args.every}-th listing of each tier)")
    views = {i: _views(matches[i], combiner) for i in fit_ids}
    grid = np.round(np.arange(0.01, 1.0, 0.01), 2)
    flag = choose(fit_ids, views, truth, lambda f: Policy(f, 0.0, combiner=combiner), grid, args.flag_precision, "flag")
    review = choose(fit_ids, views, truth, lambda f, r: Policy(f, r, combiner=combiner), [g for g in grid if g <= flag],
                    args.review_precision, "review", fixed=flag)
    pf, nf = precision_at(fit_ids, views, truth, Policy(flag, review, combiner=combiner), "flag")
    pr, nr = precision_at(fit_ids, views, truth, Policy(flag, review, combiner=combiner), "review")
    combiner.thresholds = {"flag": flag, "review": review,
                           "chosen": f"flag: the lowest probability with precision >= {args.flag_precision} on the fit half; "
                                     f"review: >= {args.review_precision}",
                           "fit_half": {"listings": len(fit_ids), "flagged": nf, "precision_flag": round(pf, 4),
                                        "flagged_or_review": nr, "precision_review": round(pr, 4)}}
    # similarity thresholds for --no-combiner, at the same operating points (raw similarities, the evidence rules applied)
    sviews = {i: _views(matches[i], None) for i in fit_ids}
    sgrid = np.round(np.arange(0.5, 1.0, 0.0025), 4)
    s_flag = choose(fit_ids, sviews, truth, lambda f: Policy(f, f - 0.03), sgrid, args.flag_precision, "flag")
    s_review = choose(fit_ids, sviews, truth, lambda f, r: Policy(f, r), [g for g in sgrid if g <= s_flag],
                      args.review_precision, "review", fixed=s_flag)
    return combiner, {"flag": s_flag, "review": s_review}


def write_defaults(model_dir: Path, combiner, similarity: dict, args, info: dict) -> dict:
    """``MODEL/combiner.json`` and the card's thresholds naming it (digest, what it was fitted on); the rest of the card as it was."""
    from markguard.checkpoint import CARD, load_card
    from markguard.fsio import atomic_write_text
    from markguard.infer.combine import digest

    path = combiner.save(model_dir / "combiner.json")
    card_path = model_dir / CARD
    doc = json.loads(card_path.read_text(encoding="utf-8"))
    doc["thresholds"] = {
        "flag": similarity["flag"], "review": similarity["review"], "per_brand": {},
        "on": "raw similarity, for scans with --no-combiner; with the default combiner the thresholds are its own (combiner.json)",
        "combiner": {"file": path.name, "sha256": digest(path), "signals": combiner.signals,
                     "flag": combiner.thresholds["flag"], "review": combiner.thresholds["review"],
                     "fitted_on": {"bench": str(args.bench), "every": args.every, "half": "fit (every other listing of each tier)",
                                   "listings": combiner.thresholds["fit_half"]["listings"], "candidates": combiner.fitted["candidates"],
                                   "verify_from": info["verify_from"],
                                   "operating_points": {"flag_precision": args.flag_precision, "review_precision": args.review_precision}},
                     "command": "python benchmarks/fit_defaults.py " + " ".join(args.argv)},
    }
    atomic_write_text(card_path, json.dumps(doc, indent=2))
    load_card(model_dir)  # still a valid card
    return doc["thresholds"]


def report(manifest: Path, index: Path, model, truth: dict, out: Path, bench: Path) -> dict:
    """The report half scanned at the default settings (``ScanOptions()``), and by SIFT + RANSAC: the defaults' table."""
    from markguard.infer.scan import ScanOptions, run_scan

    if (out / "scan").exists():
        shutil.rmtree(out / "scan")
    summary = run_scan(manifest, [index], out / "scan", model=model, opts=ScanOptions(workers=1, device="cpu"), progress=True,
                       progress_every_s=60)
    return table(out / "scan", manifest, truth, out, bench)


def table(scan_dir: Path, manifest: Path, truth: dict, out: Path, bench: Path) -> dict:
    """The defaults' table of a finished scan of the report half (``scan_dir``), with SIFT + RANSAC on the same listings."""
    from markguard.datasets.wordbench import ALL_NEGATIVE, ALL_POSITIVE, ALL_TIERS
    from markguard.infer.results import read_results
    from markguard.train.baseline import sift_scan
    from markguard.train.rates import threshold_at_fpr

    summary = json.loads((scan_dir / "summary.json").read_text())
    rows = {r.listing_id: r for r in read_results(scan_dir / "results.jsonl")}
    policy = summary["policy"]
    ids = [i for i in rows if i in truth]
    tier = np.array([truth[i].tier for i in ids])
    neg = np.isin(tier, ALL_NEGATIVE)
    pos = np.isin(tier, ALL_POSITIVE)
    on_p = policy.get("on") == "probability"

    def value(r):  # the decided value: the decider's probability (what the thresholds apply to), else its similarity
        if r.status in ("flag", "review") and r.matches:
            best = max(r.matches, key=lambda m: (m.probability if on_p else m.score) or 0.0)
            return (best.probability if on_p else best.score) or 0.0
        return -1.0  # a pass row keeps no match below the review threshold

    v = np.array([value(rows[i]) for i in ids])
    right = np.array([rows[i].brand is not None and rows[i].brand == truth[i].brand for i in ids]) & pos
    flagged = np.array([rows[i].status == "flag" for i in ids])
    t1 = max(threshold_at_fpr(v[neg], 0.01), policy["review"])  # below review nothing is seen: a conservative TPR
    at1 = v >= t1
    table = {"tiers": {}, "flag_threshold": policy["flag"], "review_threshold": policy["review"], "fpr1_threshold": t1}
    for t in ALL_TIERS:
        sel = tier == t
        if not sel.any():
            continue
        table["tiers"][t] = {"n": int(sel.sum()), "flagged": float(flagged[sel].mean()),
                             "flagged_right": float((flagged & right)[sel].mean()) if t in ALL_POSITIVE else None,
                             "tpr_fpr1_right": float((at1 & right)[sel].mean()) if t in ALL_POSITIVE else None}
    wm = np.isin(tier, ("wordmark", "wordmark-swap"))
    table["wordmarks_tpr_fpr1_right"] = float((at1 & right)[wm].mean()) if wm.any() else None
    table["fpr_at_fpr1_threshold"] = float(at1[neg].mean())
    table["precision_at_flag"] = float((flagged & right).sum() / max(1, flagged.sum()))
    table["flagged"] = int(flagged.sum())
    table["marked_flagged_right"] = float((flagged & right)[pos].mean())
    table["fpr_at_flag"] = float(flagged[neg].mean())
    table["failed_check_only_flags"] = sum(
        1 for i in ids if rows[i].status == "flag" and rows[i].matches and _only_failed(rows[i], truth[i]))
    st = summary["stage_seconds"]
    total = sum(st.values())
    table["stage_seconds"] = st
    table["verify_ocr_share"] = (st.get("verify", 0.0) + st.get("evidence", 0.0)) / max(total, 1e-9)
    table["seconds"] = summary["seconds"]
    table["options"] = {k: summary["options"][k] for k in ("verify", "ocr", "ocr_budget", "combiner")}
    # SIFT + RANSAC on the same listings: TPR at FPR 1% by inliers, right brand
    s0 = time.perf_counter()
    key = Path(manifest).read_text()
    wanted = [line.split(",")[0] for line in key.splitlines()[1:]]
    done = [r.listing_id for r in read_results(out / "sift" / "results.jsonl")] if (out / "sift" / "results.jsonl").is_file() else []
    if done == wanted:  # SIFT + RANSAC of these listings done before (it does not depend on the model): the same numbers
        sift_s = json.loads((out / "sift" / "seconds.json").read_text())["seconds"] if (out / "sift" / "seconds.json").is_file() else float("nan")
    else:
        sift_scan(manifest, bench / "gallery", out / "sift")
        sift_s = time.perf_counter() - s0
        (out / "sift" / "manifest.csv").write_text(key)
        (out / "sift" / "seconds.json").write_text(json.dumps({"seconds": sift_s}))
    srows = {r.listing_id: r for r in read_results(out / "sift" / "results.jsonl")}
    sv = np.array([srows[i].score if i in srows and srows[i].score is not None else -1.0 for i in ids])
    st1 = threshold_at_fpr(sv[neg], 0.01)
    sright = np.array([i in srows and srows[i].brand == truth[i].brand for i in ids]) & pos
    sat = sv >= st1
    table["sift"] = {"seconds": sift_s, "tiers": {t: float((sat & sright)[tier == t].mean()) for t in ALL_TIERS
                                                  if t in ALL_POSITIVE and (tier == t).any()},
                     "wordmarks_tpr_fpr1_right": float((sat & sright)[wm].mean()) if wm.any() else None,
                     "all_positive": float((sat & sright)[pos].mean())}
    table["tpr_fpr1_right_all_positive"] = float((at1 & right)[pos].mean())
    return table


def _only_failed(row, truth_row) -> bool:
    """A flag whose decider's evidence holds a failed verification and nothing else for it (no text naming its brand)."""
    m = next((m for m in row.matches if m.brand == row.brand and m.mark == row.mark), None)
    ev = (m.evidence or {}) if m is not None else {}
    return ev.get("verified") is False and ev.get("text_brand") != row.brand


def print_table(t: dict, args) -> None:
    print(f"\n## the defaults on the report half ({sum(x['n'] for x in t['tiers'].values())} listings), one scan at default "
          f"settings {t['options']}\n")
    print(f"flag threshold {t['flag_threshold']}, review {t['review_threshold']}; FPR-1% threshold {t['fpr1_threshold']:.4f}\n")
    print("| tier | n | flagged | flagged, right brand | TPR at FPR 1%, right brand | SIFT + RANSAC at FPR 1%, right brand |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in t["tiers"].items():
        f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"| {name} | {r['n']} | {r['flagged']:.3f} | {f(r['flagged_right'])} | {f(r['tpr_fpr1_right'])} | "
              f"{f(t['sift']['tiers'].get(name))} |")
    print(f"\nwordmarks (wordmark + wordmark-swap) TPR at FPR 1%, right brand: {t['wordmarks_tpr_fpr1_right']} "
          f"(SIFT + RANSAC {t['sift']['wordmarks_tpr_fpr1_right']}); all positives {t['tpr_fpr1_right_all_positive']:.3f} "
          f"(SIFT {t['sift']['all_positive']:.3f})")
    print(f"at the shipped flag threshold: {t['flagged']} flagged, precision {t['precision_at_flag']:.3f}, marked photos flagged "
          f"for the right brand {t['marked_flagged_right']:.3f}, FPR {t['fpr_at_flag']:.3f}; flags whose only evidence beside the "
          f"similarity is a failed check: {t['failed_check_only_flags']}")
    st = t["stage_seconds"]
    print(f"verification + OCR: {t['verify_ocr_share']:.0%} of the stages' time (stage seconds { {k: round(v, 1) for k, v in st.items()} }); "
          f"scan {t['seconds']:.0f} s; SIFT + RANSAC {t['sift']['seconds']:.0f} s")


def main(argv=None) -> int:
    import sys

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", required=True, type=Path, help="the real-photo bench with its wordmark tier")
    ap.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: the shipped model, markguard/weights)")
    ap.add_argument("--every", type=int, default=3, help="take every N-th listing of each tier (then halves: fit / report)")
    ap.add_argument("--work", type=Path, required=True, help="folder for the index, scans and report (kept)")
    ap.add_argument("--verify-from", type=float, default=0.8, help="the evidence scan verifies candidates from this similarity")
    ap.add_argument("--flag-precision", type=float, default=0.95)
    ap.add_argument("--review-precision", type=float, default=0.75)
    ap.add_argument("--write", action="store_true", help="write combiner.json and the card's thresholds into --model")
    ap.add_argument("--skip-report", action="store_true", help="fit (and write) only")
    args = ap.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    from markguard.checkpoint import DEFAULT_MODEL_DIR
    from markguard.infer.build import build_index

    model_dir = args.model or DEFAULT_MODEL_DIR
    print(f"# fit_defaults  {platform.processor() or platform.machine()}  {time.strftime('%Y-%m-%d %H:%M')}  {' '.join(args.argv)}")
    args.work.mkdir(parents=True, exist_ok=True)
    truth, halves = subset(args.bench, args.every, args.work)
    index = args.work / "index"
    from markguard.checkpoint import load_card

    if index.exists():  # an index another model built (the default model was retrained since): built again
        meta = json.loads((index / "markguard.json").read_text()) if (index / "markguard.json").is_file() else {}
        if meta.get("model_fingerprint") != load_card(model_dir).fingerprint:
            shutil.rmtree(index)
    if not index.exists():
        build_index(args.bench / "gallery", index, model=model_dir, kind="flat", device="cpu")
    cache = args.work / "evidence"
    matches, info = evidence_scan(args.work / "fit" / "manifest.csv", index, model_dir, args.verify_from, cache)
    combiner, similarity = fit(matches, truth, halves, info["fingerprint"], args)
    print(f"fitted on {combiner.fitted['candidates']} candidates of {len(matches)} listings: weights "
          f"{dict(zip(combiner.features, np.round(combiner.weights, 3).tolist()))}; thresholds {combiner.thresholds}; "
          f"similarity thresholds {similarity}")
    print(f"evidence scan: {info['seconds']:.0f} s, stages { {k: round(v, 1) for k, v in info['stage_seconds'].items()} }")
    if args.write:
        thr = write_defaults(model_dir, combiner, similarity, args, info)
        print(f"wrote {model_dir / 'combiner.json'} and {model_dir / 'model_card.json'} thresholds: {json.dumps(thr)[:400]}")
    else:
        combiner.save(args.work / "combiner.json")
        print(f"wrote {args.work / 'combiner.json'} (not installed: pass --write)")
    if args.skip_report:
        return 0
    if not args.write:
        print("the report scans at the default settings, which use the installed defaults: pass --write to report the new ones")
    t = report(args.work / "report" / "manifest.csv", index, args.model, truth, args.work, args.bench)
    print_table(t, args)
    (args.work / "report.json").write_text(json.dumps({"fit": {"combiner": combiner.to_json(), "similarity": similarity,
                                                               "evidence_scan": info}, "report": t}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
