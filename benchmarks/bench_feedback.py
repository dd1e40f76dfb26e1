"""The reviewer's loop on the real-photo bench: feedback from a simulated reviewer, rematch against rescan, bytes a photo.

Needs a scan of the bench with its embeddings kept (no verification, so every number here is on the
embedding similarity the stored regions give):

    markguard index build data/realbench/gallery -o IDX
    markguard scan data/realbench/listings/manifest.csv -i IDX -o SCAN --no-verify --keep-embeddings fp16
    OMP_NUM_THREADS=1 python benchmarks/bench_feedback.py --bench data/realbench --scan SCAN -i IDX --work DIR

1. Feedback. The listings are split in two halves, alternately within each tier (A: even, B: odd).
   A simulated reviewer decides every flag/review row of half A with the truth (the photo shows the
   match's brand: confirm; another registered brand: other; none: reject). The rule's margin and
   strength are chosen on A alone (negatives from A's first half, false positives on its second);
   then A's negatives are applied and half B is searched again. A false positive is a listing whose
   best match reaches the threshold with a brand the photo does not show; recall is the share of
   positive listings (copy, small, near, cross) whose best match is their brand and reaches it. The
   "after" threshold is the highest that keeps the "before" recall at the scan's flag threshold.
2. Rematch against rescan: the scan's stored regions are repeated into 100,000 photos (synthetic in
   that sense: the bench's 1,650 real photos' regions, cycled, under new listing ids) with the
   results rows they imply against the index less 30 brands, and `rematch` searches them against the
   whole index; a rescan's time is 100,000 photos at the scan's own measured images/s on this machine.
3. Bytes a photo: the fp16 store of the scan, and the same regions product-quantised.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from markguard.datasets.realbench import NEGATIVE_TIERS, POSITIVE_TIERS, TIERS, read_truth
from markguard.infer.feedback import Rule, WithNegatives, fooling_region
from markguard.infer.index import MarkIndex
from markguard.infer.rematch import EmbeddingStore, KeptRegions, StoredEmbeddings, rematch
from markguard.infer.results import RESULTS, Match, ScanRow, read_results, read_summary
from markguard.infer.search import search_batch

MARGINS = (0.0, 0.02, 0.05)
STRENGTHS = (0.5, 1.0, 2.0, 5.0)


def best_matches(index, photos: list, chunk: int = 256) -> dict[str, tuple[str | None, float]]:
    """listing → (brand, score) of its best match over its stored regions."""
    out = {}
    for s in range(0, len(photos), chunk):
        part = photos[s:s + chunk]
        vecs = [p.regions[0].vectors for p in part]
        found = search_batch(index, np.concatenate(vecs), [len(v) for v in vecs], [p.regions[0].boxes for p in part], k=3)
        for p, ms in zip(part, found):
            out[p.listing_id] = (ms[0].brand, ms[0].score, ms[0].mark, ms[0].box) if ms else (None, -1.0, None, None)
    return out


def rates(best: dict, truth: dict, listings: list[str], t: float) -> tuple[float, Counter]:
    pos = [lid for lid in listings if truth[lid].tier in POSITIVE_TIERS]
    tp = sum(best[lid][1] >= t and best[lid][0] == truth[lid].brand for lid in pos)
    fp = Counter(truth[lid].tier for lid in listings if best[lid][1] >= t and best[lid][0] != truth[lid].brand)
    return tp / max(1, len(pos)), fp


def at_recall(best: dict, truth: dict, listings: list[str], recall: float) -> tuple[float, float, Counter]:
    """The highest threshold whose recall is at least ``recall``, with its recall and false positives."""
    cands = sorted({round(v[1], 6) for v in best.values()}, reverse=True)
    for t in cands:
        r, fp = rates(best, truth, listings, t)
        if r >= recall - 1e-9:
            return t, r, fp
    return cands[-1], *rates(best, truth, listings, cands[-1])


def reviewer_negatives(index, photos: list, best: dict, truth: dict, review: float) -> dict:
    """What a reviewer who knows the truth rejects in these photos: (brand, mark) → negative vectors."""
    bank: dict = {}
    for p in photos:
        brand, score, mark, box = best[p.listing_id]
        if brand is None or score < review or brand == truth[p.listing_id].brand:
            continue  # not shown to the reviewer, or confirmed
        k = p.regions[0]
        where = fooling_region(index, k.vectors, k.boxes, brand, mark, box)
        if where is not None:
            bank.setdefault((brand, mark), []).append(k.vectors[where])
    return {key: np.stack(v) for key, v in bank.items()}


REVIEW_RECALL = 0.6  # the simulated scan shows the reviewer every row down to the score where 60% of positives are found
RECALLS = (0.3, 0.5)  # operating points the false positives are compared at


def fp_drop(index, bank, rule, photos, truth, recall) -> tuple[int, int, float, float]:
    ids = [p.listing_id for p in photos]
    before = best_matches(index, photos)
    t0, r0, fp0 = at_recall(before, truth, ids, recall)
    after = best_matches(WithNegatives(index, bank, rule), photos)
    t1, r1, fp1 = at_recall(after, truth, ids, r0)
    return sum(fp0.values()), sum(fp1.values()), r0, r1


def feedback_section(index, stored, truth, summary) -> tuple[list[str], dict]:
    photos = [p for p in stored.photos() if p.listing_id in truth and p.regions]
    tiers = [t for t in TIERS if any(truth[p.listing_id].tier == t for p in photos)]
    by_tier: dict[str, list] = {t: [] for t in tiers}
    for p in photos:
        by_tier[truth[p.listing_id].tier].append(p)
    A = [p for t in tiers for p in by_tier[t][0::2]]
    B = [p for t in tiers for p in by_tier[t][1::2]]
    A1 = [p for t in tiers for p in by_tier[t][0::4]]
    A2 = [p for t in tiers for p in by_tier[t][2::4]]
    # the rule chosen on half A alone: negatives from its first half, false positives on its second
    best_a1 = best_matches(index, A1)
    review_a1 = at_recall(best_a1, truth, [p.listing_id for p in A1], REVIEW_RECALL)[0]
    bank_a1 = reviewer_negatives(index, A1, best_a1, truth, review_a1)
    grid = {}
    for m in MARGINS:
        for s in STRENGTHS:
            grid[(m, s)] = fp_drop(index, bank_a1, Rule(m, s), A2, truth, RECALLS[-1])
    (m_best, s_best) = min(grid, key=lambda k: (grid[k][1] - grid[k][0], -k[0], k[1]))
    rule = Rule(m_best, s_best)
    best_a = best_matches(index, A)
    review = at_recall(best_a, truth, [p.listing_id for p in A], REVIEW_RECALL)[0]
    bank = reviewer_negatives(index, A, best_a, truth, review)
    decided = sum(best_a[p.listing_id][0] is not None and best_a[p.listing_id][1] >= review for p in A)
    ids_b = [p.listing_id for p in B]
    before = best_matches(index, B)
    after = best_matches(WithNegatives(index, bank, rule), B)
    lines = [
        f"Half A: {len(A)} listings; the simulated scan shows the reviewer every row scoring at least {review:.4f} (where "
        f"{REVIEW_RECALL:.0%} of A's positives are found): {decided} rows decided, "
        f"{sum(len(v) for v in bank.values())} negatives for {len(bank)} references. Half B: {len(B)} listings.",
        f"Rule chosen on half A (negatives from A's first half, false positives on its second at recall {RECALLS[-1]}): "
        f"margin {m_best}, strength {s_best}.",
        "",
    ]
    result = {"rule": {"margin": m_best, "strength": s_best}, "negatives": sum(len(v) for v in bank.values()),
              "decided": decided, "review_threshold": review, "grid": {f"{m},{s}": v for (m, s), v in grid.items()}, "at": {}}
    for target in RECALLS:
        t0, r0, fp0 = at_recall(before, truth, ids_b, target)
        t1, r1, fp1 = at_recall(after, truth, ids_b, r0)
        lines += [f"At recall {r0:.3f} (positive tiers, right brand) on half B: threshold {t0:.4f} before, {t1:.4f} after "
                  f"(recall {r1:.3f}).", "",
                  "| half B, tier | listings | false positives before | after |", "|---|---|---|---|"]
        for t in tiers:
            n = sum(truth[i].tier == t for i in ids_b)
            lines.append(f"| {t} | {n} | {fp0.get(t, 0)} | {fp1.get(t, 0)} |")
        tot0, tot1 = sum(fp0.values()), sum(fp1.values())
        drop = f"{1 - tot1 / tot0:.0%} fewer" if tot0 else "n/a"
        lines += [f"| **all** | {len(ids_b)} | **{tot0}** | **{tot1}** ({drop}) |", ""]
        result["at"][str(target)] = {"recall": [r0, r1], "thresholds": [t0, t1], "fp_before": dict(fp0), "fp_after": dict(fp1)}
    lines += [f"The rule's grid on half A (false positives on A's second half at recall {RECALLS[-1]}, before → after):", "",
              "| margin \\ strength | " + " | ".join(str(s) for s in STRENGTHS) + " |", "|---|" + "---|" * len(STRENGTHS)]
    for m in MARGINS:
        lines.append(f"| {m} | " + " | ".join(f"{grid[(m, s)][0]} → {grid[(m, s)][1]}" for s in STRENGTHS) + " |")
    return lines, result


def synthetic_store(scan: Path, work: Path, n_photos: int, removed: set[str], policy_flag: float, policy_review: float) -> Path:
    """``n_photos`` stored photos cycling the scan's real ones, with the rows a scan against the index less ``removed``
    brands would have written (their matches dropped, the rest re-decided with the scan's thresholds)."""
    src = StoredEmbeddings(scan)
    photos = [p for p in src.photos() if p.regions]
    rows = {i: r for i, r in enumerate(read_results(scan / RESULTS))}
    out = work / "rematch-100k"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    summary = read_summary(scan)
    summary["references"] = {k: v for k, v in (summary.get("references") or {}).items() if k.split("/")[0] not in removed}
    (out / "summary.json").write_text(json.dumps(summary))
    store = EmbeddingStore(out, model=src.model, dim=src.dim, encoding="fp16")
    with open(out / RESULTS, "w", encoding="utf-8") as f:
        for i in range(n_photos):
            p = photos[i % len(photos)]
            r = rows[p.row]
            kept = [m for m in r.matches if m.brand not in removed]
            top = max(kept, key=lambda m: m.score, default=None)
            status = "pass" if top is None or top.score < policy_review else "flag" if top.score >= policy_flag else "review"
            row = ScanRow(f"S{i:06d}", p.image, r.seller_id, status, top.score if top else r.score,
                          *(None, None, None) if status == "pass" else (top.brand, top.mark, top.box), kept)
            f.write(json.dumps(row.to_json()) + "\n")
            row.kept = [KeptRegions("", p.regions[0].vectors, p.regions[0].boxes)]
            store.add(row)
    store.finish()
    return out


def rematch_section(scan: Path, index_path: Path, work: Path, n_photos: int) -> tuple[list[str], dict]:
    summary = read_summary(scan)
    flag, review = float(summary["policy"]["flag"]), float(summary["policy"]["review"])
    brands = sorted({k.split("/")[0] for k in summary["references"]})
    removed = set(brands[::10])  # 30 of 300 brands "joined after the scan"
    t = time.perf_counter()
    out = synthetic_store(scan, work, n_photos, removed, flag, review)
    build_s = time.perf_counter() - t
    stored = StoredEmbeddings(out)
    t = time.perf_counter()
    res = rematch(out, [index_path])
    rematch_s = time.perf_counter() - t
    rate = float(summary["images_per_s"])
    rescan_s = n_photos / rate
    per_photo_fp16 = StoredEmbeddings(scan).bytes_on_disk() / summary["images"]
    lines = [
        f"{n_photos:,} stored photos (the bench's {summary['images']:,} real photos' stored regions, cycled under new ids; "
        f"{res['regions']:,} regions), the index grown by {len(removed)} brands since their rows were decided.",
        "",
        "| | seconds | photos/s |",
        "|---|---|---|",
        f"| rescan (the bench scan's own rate, {rate} img/s, times {n_photos:,}) | {rescan_s:,.0f} | {rate} |",
        f"| `markguard rematch` (measured) | {rematch_s:,.1f} | {n_photos / rematch_s:,.0f} |",
        "",
        f"Rematch is **{rescan_s / rematch_s:,.0f}x** faster than a rescan; it wrote {res['changed']:,} changed rows "
        f"({res['counts']}), {res['new_matches']:,} new matches. (Writing the synthetic store took {build_s:.0f} s.)",
        f"Store on disk: {stored.bytes_on_disk() / n_photos:,.0f} bytes a photo (fp16).",
    ]
    return lines, {"photos": n_photos, "rematch_s": rematch_s, "rescan_s": rescan_s, "ratio": rescan_s / rematch_s,
                   "changed": res["changed"], "bytes_per_photo_fp16_synthetic": stored.bytes_on_disk() / n_photos,
                   "bytes_per_photo_fp16_scan": per_photo_fp16}


def bytes_section(scan: Path, index_path: Path, work: Path) -> tuple[list[str], dict]:
    """The scan's fp16 store against the same regions product-quantised, and how often PQ changes a photo's best match."""
    src = StoredEmbeddings(scan)
    photos = [p for p in src.photos() if p.regions]
    out = work / "pq-store"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    store = EmbeddingStore(out, model=src.model, dim=src.dim, encoding="pq")
    for p in photos:
        row = ScanRow(p.listing_id, p.image, None, "pass", 0.0, None, None, None, [])
        row.kept = [KeptRegions("", p.regions[0].vectors, p.regions[0].boxes)]
        store.add(row)
    store.finish()
    pq = StoredEmbeddings(out)
    n = len(photos)
    regions = sum(len(p.regions[0].vectors) for p in photos)
    index = MarkIndex.load(index_path)
    a = best_matches(index, photos)
    b = best_matches(index, [p for p in pq.photos()])
    same = sum(a[k][0] == b[k][0] for k in a) / len(a)
    diff = np.array([abs(a[k][1] - b[k][1]) for k in a])
    lines = [
        f"{n:,} photos, {regions / n:.1f} regions a photo (dim {src.dim}).",
        "",
        "| encoding | bytes a photo | best match's brand as with fp16 | median / 95th pct. score change |",
        "|---|---|---|---|",
        f"| fp16 | {src.bytes_on_disk() / n:,.0f} | — | — |",
        f"| pq (32 bytes a region) | {pq.bytes_on_disk() / n:,.0f} | {same:.3f} | {np.median(diff):.4f} / {np.percentile(diff, 95):.4f} |",
    ]
    return lines, {"fp16": src.bytes_on_disk() / n, "pq": pq.bytes_on_disk() / n, "pq_same_brand": same,
                   "pq_score_change_median": float(np.median(diff)), "regions_per_photo": regions / n}


def quick_world(work: Path) -> tuple[dict, Path, Path]:
    """--quick: a synthetic dump, a random small model and its index, scanned with its embeddings kept; the truth as
    bench rows (a listing showing a registered brand is tier "copy", else "none")."""
    from types import SimpleNamespace

    import torch

    from markguard.checkpoint import ModelCard, create_model, save_checkpoint
    from markguard.datasets.synth import SynthConfig, synth_dataset
    from markguard.infer.build import build_index
    from markguard.infer.scan import ScanOptions, run_scan

    synth_dataset(work / "synth", brands=4, marks_per_brand=1, distractor_brands=2, listings=40, seed=0, cfg=SynthConfig(size=(160, 120)))
    torch.manual_seed(0)
    card = ModelCard(backbone="resnet10t", dim=32, input_size=48, scan_size=64, regions={"mode": "grid", "scales": [1.0, 0.5], "overlap": 0.0},
                     thresholds={"flag": 0.9, "review": 0.8, "per_brand": {}})
    save_checkpoint(create_model(card), card, work / "model")
    build_index(work / "synth" / "gallery", work / "index", model=work / "model", device="cpu")
    run_scan(work / "synth" / "listings" / "manifest.csv", [work / "index"], work / "scan", progress=False,
             opts=ScanOptions(batch_size=8, workers=0, device="cpu", verify=False, ocr=False, combiner=None, keep_embeddings="fp16"))
    truth = {}
    for line in (work / "synth" / "truth.jsonl").read_text().splitlines():
        t = json.loads(line)
        shown = [m["brand"] for m in t["marks"] if m["registered"]]
        truth[t["listing_id"]] = SimpleNamespace(tier="copy" if shown else "none", brand=shown[0] if shown else "")
    return truth, work / "scan", work / "index"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=Path)
    ap.add_argument("--scan", type=Path, help="the bench scanned with --no-verify --keep-embeddings fp16")
    ap.add_argument("--index", "-i", type=Path)
    ap.add_argument("--work", type=Path, help="a scratch folder (the 100,000-photo store goes here)")
    ap.add_argument("--quick", action="store_true", help="a synthetic dump and a random model, 500 stored photos: the script runs")
    ap.add_argument("--photos", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "feedback.md")
    ap.add_argument("--skip", nargs="*", default=[], choices=["feedback", "rematch", "bytes"])
    args = ap.parse_args()
    if args.quick:
        import tempfile

        args.work = Path(tempfile.mkdtemp(prefix="bench-feedback-"))
        truth, args.scan, args.index = quick_world(args.work)
        args.photos, args.out = 500, args.work / "feedback.md"
    elif not (args.bench and args.scan and args.index and args.work):
        ap.error("give --bench, --scan, --index and --work (or --quick)")
    else:
        truth = read_truth(args.bench / "truth.csv")
    summary = read_summary(args.scan)
    index = MarkIndex.load(args.index)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = ["# The reviewer's loop on the real-photo bench", "",
           f"Measured {stamp} on {platform.node()} ({platform.processor() or platform.machine()}, shared by several jobs: "
           "timings are one run's), markguard's default model, the bench's 300-brand gallery.",
           f"Command: `OMP_NUM_THREADS=1 python {' '.join(sys.argv)}`", ""]
    record = {}
    if "feedback" not in args.skip:
        lines, record["feedback"] = feedback_section(index, StoredEmbeddings(args.scan), truth, summary)
        doc += ["## Feedback: false positives at the same recall, before and after one round", "", *lines, ""]
        print("\n".join(lines), flush=True)
    if "bytes" not in args.skip:
        lines, record["bytes"] = bytes_section(args.scan, args.index, args.work)
        doc += ["## Bytes a photo", "", *lines, ""]
        print("\n".join(lines), flush=True)
    if "rematch" not in args.skip:
        lines, record["rematch"] = rematch_section(args.scan, args.index, args.work, args.photos)
        doc += ["## Rematch against a rescan", "", *lines, ""]
        print("\n".join(lines), flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "bench_feedback.json").write_text(json.dumps(record, indent=2, default=str))
    args.out.write_text("\n".join(doc) + "\n")
    if args.quick:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
