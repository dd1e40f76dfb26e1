"""Text evidence: how often letter-swapped and re-typeset wordmarks of registered brands are matched to their brand, how
often ordinary words are matched to some brand, and what OCR costs a crop.

Two parts:

* text match alone (no OCR): every registered name (a simple-icons package's titles and aliases,
  or a built-in list) as written, upper-cased, and with one letter swapped the way
  ``datasets/synth.py: swap_letters`` counterfeits it; against pronounceable non-brand words;
* OCR + text match: wordmarks of sampled brands drawn in this machine's fonts (as registered, with
  a letter swapped, re-typeset in another font), pasted into a 480x360 procedural listing photo;
  the region around the wordmark (jittered as a proposal would be) is read by RapidOCR and matched.
  Non-brand words drawn the same way are the negatives;
* per signal on synthetic listings (``--listings``): a gallery of logos and wordmarks (their words
  registered as ``wordmarks`` in brands.yaml), listings with half the registered marks near-matched
  (letter-swapped wordmarks among them), scanned by the shipped model with every threshold off;
  each batch's candidates go through ``infer.evidence.collect`` with the OCR budget; a combiner is
  fitted on the first half of the listings and every signal is scored on the second half:
  TPR at FPR 1% (a listing scores its best candidate), and the time OCR adds to the scan.

* per signal on real photos (``--real BENCH``, a bench from ``markguard data realbench``: brands the
  model never trained on): every ``--every``-th listing of each tier is scanned as a user scans
  (``run_scan``: an index with a background bank, ``--verify``, ``--ocr`` at its default budget, every
  threshold off), and each listing is scored by its best candidate under each signal alone —
  similarity, bank-normalised similarity, verification (inliers), text (the read text naming the
  candidate's brand) — and by the combined probability. The combiner is cross-fitted: fitted on
  one half of the listings (every other one of each tier) and scored on the other, and the other way
  round, so that no listing is scored by a combiner fitted on it. TPR at FPR 1% per tier.

    python benchmarks/bench_evidence.py --names /path/to/simple-icons/package/data/simple-icons.json
    python benchmarks/bench_evidence.py --real BENCH --every 4 [--bank 256]
    python benchmarks/bench_evidence.py --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from markguard.datasets.synth import SYLLABLES, draw_wordmark, find_fonts, procedural_background, swap_letters, wordmark_spec
from markguard.infer.ocr import OcrConfig, OcrReader
from markguard.infer.textmatch import Lexicon, fold

BUILTIN = {"adidas": ["adidas"], "nike": ["Nike"], "puma": ["Puma"], "reebok": ["Reebok"], "chanel": ["Chanel"],
           "gucci": ["Gucci"], "levis": ["Levi's"], "cocacola": ["Coca-Cola"], "samsung": ["Samsung"], "lacoste": ["Lacoste"],
           "northface": ["The North Face"], "timberland": ["Timberland"], "ralphlauren": ["Ralph Lauren"], "rolex": ["Rolex"]}


def read_names(path: str | None) -> dict[str, list[str]]:
    """brand -> names, from a simple-icons ``data/simple-icons.json`` (title + ``aliases.aka``), or the built-in list."""
    if not path:
        return BUILTIN
    icons = json.loads(Path(path).read_text(encoding="utf-8"))
    icons = icons["icons"] if isinstance(icons, dict) else icons
    return {i.get("slug") or i["title"]: [i["title"], *((i.get("aliases") or {}).get("aka") or [])] for i in icons}


def non_brand_words(n: int, lexicon: Lexicon, names: dict[str, list[str]], rng: np.random.Generator) -> list[str]:
    """Pronounceable words of 2-4 syllables that are not themselves a registered name (after folding)."""
    taken = {fold(v) for vs in names.values() for v in vs}
    out = []
    while len(out) < n:
        w = "".join(rng.choice(SYLLABLES) for _ in range(int(rng.integers(2, 5)))).capitalize()
        if fold(w) not in taken:
            out.append(w)
    return out


def bucket(name: str) -> str:
    n = len(fold(name))
    return "<=4" if n <= 4 else "5-8" if n <= 8 else ">=9"


def text_part(names, lexicon, samples: int, rng) -> dict:
    brands = sorted(names)
    picked = [brands[i] for i in rng.choice(len(brands), size=min(samples, len(brands)), replace=False)]
    rows = {}
    t0 = time.perf_counter()
    calls = 0
    for brand in picked:
        name = names[brand][0]
        if len(fold(name)) < 2:
            continue
        for variant, text in (("as registered", name), ("upper case", name.upper()), ("letter swapped", swap_letters(name, rng))):
            found = lexicon.match(text)
            calls += 1
            r = rows.setdefault((variant, bucket(name)), {"n": 0, "top1": 0, "named": 0, "wrong_top1": 0})
            r["n"] += 1
            r["top1"] += bool(found) and found[0].brand == brand
            r["named"] += any(m.brand == brand for m in found)
            r["wrong_top1"] += bool(found) and found[0].brand != brand
    words = non_brand_words(max(200, samples), lexicon, names, rng)
    false = sum(bool(lexicon.match(w)) for w in words)
    calls += len(words)
    seconds = time.perf_counter() - t0
    return {"rows": rows, "negatives": len(words), "false_matches": false,
            "false_examples": [(w, lexicon.best(w).alias) for w in words if lexicon.match(w)][:8],
            "us_per_match": 1e6 * seconds / max(1, calls)}


def paste(photo, mark, rng, frac):
    """Paste RGBA ``mark`` scaled to ``frac`` of the photo's width at a random place; its box."""
    w = max(8, int(photo.width * frac))
    h = max(4, round(mark.height * w / mark.width))
    if h > photo.height * 0.8:
        h = int(photo.height * 0.8)
        w = max(8, round(mark.width * h / mark.height))
    mark = mark.resize((w, h))
    x, y = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
    photo.paste(mark, (x, y), mark)
    return (x, y, x + w, y + h)


def jitter(box, rng, amount=0.1):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d = rng.uniform(-amount, amount, 4) * np.array([w, h, w, h])
    return tuple(float(v) for v in np.array(box, dtype=float) + d)


def ocr_part(names, lexicon, crops: int, rng, negatives: int, config: OcrConfig = OcrConfig()) -> dict:
    fonts = find_fonts()
    latin = sorted(b for b, vs in names.items() if vs[0].isascii() and len(fold(vs[0])) >= 2 and len(vs[0]) <= 18)
    reader = OcrReader(config)
    reader.engine()  # load once, outside the timings
    variants = ("as registered", "letter swapped", "re-typeset")
    rows, seconds, cpu = {}, [], []
    examples = []

    def read_one(text, spec_font_other: bool, spec):
        photo = procedural_background(480, 360, rng).convert("RGB")
        if spec_font_other and len(fonts) > 1:
            others = [f for f in fonts if f != spec.font]
            spec = wordmark_spec(spec.text, rng, [others[int(rng.integers(len(others)))]])
        box = paste(photo, draw_wordmark(spec, text), rng, float(rng.uniform(0.3, 0.7)))
        c0 = time.process_time()
        read = reader.read(photo, jitter(box, rng))
        cpu.append(time.process_time() - c0)
        seconds.append(read.seconds)
        return read

    for i in range(crops):
        brand = latin[int(rng.integers(len(latin)))]
        name = names[brand][0]
        variant = variants[i % len(variants)]
        spec = wordmark_spec(name, rng, fonts)
        text = swap_letters(name, rng) if variant == "letter swapped" else name
        read = read_one(text, variant == "re-typeset", spec)
        found = lexicon.match(read.text)
        r = rows.setdefault(variant, {"n": 0, "read": 0, "top1": 0, "named": 0, "wrong_top1": 0, "failed": 0})
        r["n"] += 1
        r["read"] += read.text is not None
        r["failed"] += read.reason is not None
        r["top1"] += bool(found) and found[0].brand == brand
        r["named"] += any(m.brand == brand for m in found)
        r["wrong_top1"] += bool(found) and found[0].brand != brand
        if len(examples) < 9:
            examples.append((variant, text, read.text, found[0].brand if found else None, brand))
    false, false_examples = 0, []
    for w in non_brand_words(negatives, lexicon, names, rng):
        read = read_one(w, False, wordmark_spec(w, rng, fonts))
        m = lexicon.best(read.text)
        if m is not None:
            false += 1
            false_examples.append((w, read.text, m.alias))
    reader.close()
    return {"rows": rows, "negatives": negatives, "false_matches": false, "false_examples": false_examples[:8],
            "examples": examples, "fonts": len(fonts),
            "seconds": {"median": statistics.median(seconds), "p90": float(np.percentile(seconds, 90)), "mean": statistics.fmean(seconds)},
            "cpu_seconds": {"median": statistics.median(cpu), "mean": statistics.fmean(cpu)}}


def tpr_at_fpr(scores, positive, fpr=0.01):
    from markguard.train.rates import threshold_at_fpr

    s, p = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    t = threshold_at_fpr(s[~p], fpr)
    return float((s[p] >= t).mean()), float((s[~p] >= t).mean()), t


def add_swapped_listings(data: dict, marks, n: int, seed: int) -> None:
    """Append ``n`` listings showing a registered wordmark with one letter swapped (``swap_letters``) to the synthetic dump."""
    import csv

    from markguard.datasets.synth import jpeg_roundtrip

    rng = np.random.default_rng(seed + 777)
    wordmarks = [m for m in marks if m.wordmark is not None]
    with open(data["manifest"], "a", newline="") as mf, open(data["truth"], "a") as truth:
        writer = csv.writer(mf)
        for i in range(n):
            m = wordmarks[int(rng.integers(len(wordmarks)))]
            w, h = (480, 360) if rng.random() < 0.5 else (360, 480)
            photo = procedural_background(w, h, rng).convert("RGB")
            box = paste(photo, draw_wordmark(m.wordmark, swap_letters(m.wordmark.text, rng)), rng, float(rng.uniform(0.25, 0.6)))
            lid = f"W{i:05d}"
            jpeg_roundtrip(photo, int(rng.integers(60, 95))).save(Path(data["listings"]) / f"{lid}.jpg", quality=95)
            writer.writerow([lid, f"{lid}.jpg", "S9999", f"listing {lid}"])
            truth.write(json.dumps({"listing_id": lid, "image": f"{lid}.jpg", "seller_id": "S9999",
                                    "marks": [{"brand": m.brand, "mark": m.mark, "box": list(box), "registered": True,
                                               "variant": "letters"}]}) + "\n")


def listings_part(n: int, seed: int, budgets: list[float], workdir: Path, swapped: int, min_confidence: float,
                  wheres: list[str] = ("candidates",)) -> dict:
    """Scan synthetic listings with every threshold off, collect evidence per batch, fit on half, score the rest."""
    import yaml

    from markguard.checkpoint import DEFAULT_MODEL_DIR
    from markguard.datasets.registry import load_gallery
    from markguard.datasets.synth import SynthConfig, make_marks, synth_dataset
    from markguard.infer.build import build_index
    from markguard.infer.decide import Policy
    from markguard.infer.evidence import collect
    from markguard.infer.scan import ScanOptions, load_searchers, scan_rows

    brands = 24
    data = synth_dataset(workdir / "data", brands=brands, marks_per_brand=2, distractor_brands=8, listings=n, seed=seed,
                         cfg=SynthConfig(p_near_match=0.5))
    doc = yaml.safe_load((data["gallery"] / "brands.yaml").read_text())
    for m in make_marks(brands, 2, seed=seed):  # the same marks synth_dataset drew: register the wordmarks' words
        if m.wordmark is not None:
            doc["brands"][m.brand]["wordmarks"] = [m.wordmark.text]
    (data["gallery"] / "brands.yaml").write_text(yaml.safe_dump(doc))
    # the swapped ones are interleaved by the manifest's order only at its end: both halves get some
    add_swapped_listings(data, make_marks(brands, 2, seed=seed), swapped, seed)
    lexicon = Lexicon.from_gallery(load_gallery(data["gallery"]))
    build_index(data["gallery"], workdir / "index", model=DEFAULT_MODEL_DIR, kind="flat", device="cpu")
    searchers = load_searchers([workdir / "index"], DEFAULT_MODEL_DIR, "cpu")
    truth = {}
    for line in Path(data["truth"]).read_text().splitlines():
        t = json.loads(line)
        truth[t["listing_id"]] = t
    t0 = time.perf_counter()
    rows = [r for r in scan_rows(data["manifest"], searchers, Policy(-1.0, -1.0), ScanOptions(workers=0, k=10, max_matches=10, batch_size=16))
            if r.status != "error"]
    scan_s = time.perf_counter() - t0
    from PIL import Image

    by_budget = {}
    for budget, where in [(b, w) for w in wheres for b in budgets]:
        reader = OcrReader(OcrConfig(lines=int(budget), min_confidence=min_confidence, where=where))
        reader.engine()
        cands, ocr_s = [], 0.0
        for start in range(0, len(rows), 16):  # the scan's batch size (the OCR budget is per photo: it does not matter)
            batch = rows[start:start + 16]
            photos = [Image.open(data["listings"] / r.image).convert("RGB") for r in batch]
            t1 = time.perf_counter()
            cands += collect(photos, [r.matches for r in batch], lexicon=lexicon, reader=reader)
            ocr_s += time.perf_counter() - t1
        reader.close()
        by_budget[(budget, where)] = (cands, ocr_s)
    return {"budgets": {b: score_signals(rows, cands, truth, searchers[0].card.fingerprint) | {"ocr_s": ocr_s}
                        for b, (cands, ocr_s) in by_budget.items()}, "scan_s": scan_s, "listings": len(rows)}


def score_signals(rows, cands, truth, fingerprint) -> dict:
    """Fit a combiner on every other listing; TPR at FPR 1% of each signal (and the combination) on the rest."""
    from markguard.infer.combine import fit_combiner

    def shown(r):
        return {m["brand"] for m in truth[r.listing_id]["marks"] if m["registered"]}

    def letters(r):
        return any(m["variant"] == "letters" for m in truth[r.listing_id]["marks"] if m["registered"])

    pairs = list(zip(rows, cands))
    fit, test = pairs[0::2], pairs[1::2]  # alternate listings: each half gets its share of every tier
    fit_c = [c for r, cs in fit for c in cs]
    fit_y = [c.brand in shown(r) for r, cs in fit for c in cs]
    combiner = fit_combiner(fit_c, fit_y, model_fingerprint=fingerprint)
    for _, cs in test:
        combiner.apply(cs)

    def text_strength(c):
        t = c.evidence.get("text")
        return 1.0 / (1 + (t.distance or 0)) if t is not None and t.brand == c.brand else 0.0

    signals = {
        "similarity": lambda c: c.evidence["similarity"].value if "similarity" in c.evidence else -1.0,
        "text": text_strength,
        "combined probability": lambda c: c.probability,
    }
    pos = [bool(shown(r)) for r, _ in test]
    table = {}
    for name, f in signals.items():
        best = [max(cs, key=f) if cs else None for _, cs in test]
        scores = [f(b) if b is not None else -1.0 for b in best]
        tpr, fpr, thr = tpr_at_fpr(scores, pos)
        right = [b is not None and b.brand in shown(r) for b, (r, _) in zip(best, test)]
        s, p = np.asarray(scores), np.asarray(pos)
        hit = s >= thr
        lt = np.asarray([letters(r) for r, _ in test])
        table[name] = {"tpr": tpr, "fpr": fpr, "tpr_right_brand": float((hit & np.asarray(right))[p].mean()),
                       "tpr_letters": float(hit[p & lt].mean()) if (p & lt).any() else None}
    read = sum(1 for _, cs in test if cs and "text" in cs[0].evidence and cs[0].evidence["text"].reason is None)
    return {"test": len(test), "positives": int(sum(pos)), "negatives": len(pos) - int(sum(pos)),
            "letter_swapped": int(sum(letters(r) for r, _ in test)), "table": table, "photos_read": read,
            "weights": dict(zip(combiner.features, np.round(combiner.weights, 3).tolist()))}


# --------------------------------------------------------------------------- per signal on real photos

REAL_SIGNALS = {  # a candidate's score under each signal alone; -1 where the signal said nothing of it
    "similarity": lambda c: c.evidence["similarity"].value if "similarity" in c.evidence else -1.0,
    "bank-normalised similarity": lambda c: c.evidence["similarity_norm"].value if "similarity_norm" in c.evidence else -1.0,
    # inliers, with the share of the reference they cover breaking ties between equal counts
    "verification (inliers)": lambda c: (c.evidence["geometry"].inliers + c.evidence["geometry"].coverage) if "geometry" in c.evidence else -1.0,
    "text (names the brand)": lambda c: (1.0 / (1 + (c.evidence["text"].distance or 0))
                                         if "text" in c.evidence and c.evidence["text"].brand == c.brand else -1.0),
}


def real_subset(bench: Path, every: int, out: Path) -> tuple[Path, Path]:
    """Every ``every``-th listing of each tier, copied with the gallery under ``out`` (a scan reads only under its
    dump's folder, and the bench's own folder is left as it is): the listings' manifest and truth."""
    import csv
    import shutil

    with open(bench / "truth.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if int(r["listing_id"].rsplit("-", 1)[1]) % every == 0]
        fields = reader.fieldnames
    listings = out / "listings"
    listings.mkdir(parents=True, exist_ok=True)
    for r in rows:
        shutil.copy2(bench / "listings" / f"{r['listing_id']}.jpg", listings / f"{r['listing_id']}.jpg")
    with open(listings / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([["listing_id", "image_path"], *([r["listing_id"], f"{r['listing_id']}.jpg"] for r in rows)])
    with open(out / "truth.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    if not (out / "gallery").exists():
        shutil.copytree(bench / "gallery", out / "gallery")
    return listings / "manifest.csv", out / "truth.csv"


def real_part(bench: Path, every: int, workdir: Path, *, bank: int, ocr_budget: float, model: str | None,
              review_fpr: float = 0.05) -> dict:
    """Scan the subset with every signal on; score each signal alone and the cross-fitted combination per tier."""
    from markguard.datasets.wordbench import ALL_NEGATIVE as NEGATIVE_TIERS, ALL_POSITIVE as POSITIVE_TIERS, ALL_TIERS as TIERS, read_truth
    from markguard.infer.build import build_index
    from markguard.infer.combine import fit_combiner
    from markguard.infer.evidence import candidate_from_json
    from markguard.infer.results import read_results
    from markguard.infer.scan import ScanOptions, run_scan
    from markguard.train.rates import threshold_at_fpr

    manifest, truth_path = real_subset(bench, every, workdir)
    truth = read_truth(truth_path)
    t0 = time.perf_counter()
    build_index(workdir / "gallery", workdir / "index", model=model, kind="flat", device="cpu", bank=bank)
    index_s = time.perf_counter() - t0
    # Verification runs as a scan's default gate runs it: on candidates near or above the review threshold. The review
    # threshold a user would set is taken from a first pass without verification or OCR: the score a share ``review_fpr``
    # of the negative listings reach; the evidence scan then keeps every threshold off so that every candidate is written
    # (and scored below), but verifies only from that review threshold less the gate's margin.
    from markguard.infer.verify import VerifyConfig

    first = ScanOptions(workers=1, verify=False, ocr=False, flag=-1.0, review=-1.0, combiner=None, device="cpu")
    s0 = run_scan(manifest, [workdir / "index"], workdir / "first", model=model, opts=first, progress=True, progress_every_s=60)
    rows0 = {r.listing_id: r for r in read_results(workdir / "first" / "results.jsonl")}
    neg_best = [rows0[i].score if rows0[i].score is not None else -1.0 for i in truth if i in rows0 and truth[i].tier in NEGATIVE_TIERS]
    review = float(np.quantile(neg_best, 1.0 - review_fpr))
    verify_from = review - VerifyConfig().near
    opts = ScanOptions(workers=1, verify=True, verify_from=verify_from, ocr=True, ocr_budget=int(ocr_budget), flag=-1.0, review=-1.0,
                       combiner=None, device="cpu")
    summary = run_scan(manifest, [workdir / "index"], workdir / "scan", model=model, opts=opts, progress=True, progress_every_s=60)
    rows = {r.listing_id: r for r in read_results(workdir / "scan" / "results.jsonl")}
    ids = [i for i in truth if i in rows]
    cands = {i: [candidate_from_json(m.to_json()) for m in rows[i].matches] for i in ids}

    def label(i, c):
        return truth[i].tier in POSITIVE_TIERS and c.brand == truth[i].brand

    # two halves, every other listing of each tier; each scored by the combiner fitted on the other
    by_tier: dict[str, list[str]] = {}
    for i in ids:
        by_tier.setdefault(truth[i].tier, []).append(i)
    halves = [[i for t in by_tier.values() for i in t[h::2]] for h in (0, 1)]
    fingerprint = summary["model"]["fingerprint"]
    weights = []
    for fit_half, test_half in ((halves[0], halves[1]), (halves[1], halves[0])):
        fc = [c for i in fit_half for c in cands[i]]
        combiner = fit_combiner(fc, [label(i, c) for i in fit_half for c in cands[i]], model_fingerprint=fingerprint)
        weights.append(dict(zip(combiner.features, np.round(combiner.weights, 2).tolist())))
        for i in test_half:
            for c, p in zip(cands[i], combiner.probabilities(cands[i])):
                c.probability = float(p)
    signals = {**REAL_SIGNALS, "combined probability": lambda c: c.probability}
    tier = np.array([truth[i].tier for i in ids])
    neg = np.isin(tier, NEGATIVE_TIERS)
    table: dict[str, dict] = {}
    for name, f in signals.items():
        best = [max(cands[i], key=f) if cands[i] else None for i in ids]
        score = np.array([f(b) if b is not None else -1.0 for b in best])
        thr = threshold_at_fpr(score[neg], 0.01)
        hit = score >= thr
        right = np.array([b is not None and b.brand == truth[i].brand for b, i in zip(best, ids)])
        table[name] = {"threshold": thr, "fpr": float(hit[neg].mean()),
                       "tiers": {t: {"n": int((tier == t).sum()), "tpr": float(hit[tier == t].mean()),
                                     "right": float((hit & right)[tier == t].mean()) if t in POSITIVE_TIERS else None}
                                 for t in TIERS if (tier == t).any()},
                       "all": {"n": int((~neg).sum()), "tpr": float(hit[~neg].mean()), "right": float((hit & right)[~neg].mean())}}
    seen = {name: sum(any(f(c) > -1.0 for c in cands[i]) for i in ids) for name, f in REAL_SIGNALS.items()}
    return {"listings": len(ids), "negatives": int(neg.sum()), "table": table, "weights": weights, "seen": seen,
            "stage_seconds": summary["stage_seconds"], "seconds": summary["seconds"], "images_per_s": summary["images_per_s"],
            "index_s": index_s, "halves": [len(h) for h in halves], "ocr_budget": ocr_budget, "review_fpr": review_fpr,
            "review": review, "verify_from": verify_from, "first_pass": {"seconds": s0["seconds"], "stage_seconds": s0["stage_seconds"]},
            "checked": sum("geometry" in c.evidence for i in ids for c in cands[i]),
            "candidates": sum(len(cands[i]) for i in ids)}


def print_real(res: dict, args) -> None:
    tiers = [t for t in next(iter(res["table"].values()))["tiers"]]
    print(f"\n## per signal on real photos: {res['listings']} listings of {args.real} (every {args.every}th of each tier), "
          f"{res['negatives']} negative; combiner cross-fitted on halves of {res['halves']} listings; review threshold "
          f"{res['review']:.4f} (reached by {res['review_fpr']:.0%} of the negatives without verification), candidates verified from "
          f"{res['verify_from']:.4f}: {res['checked']} of {res['candidates']}; OCR of {res['ocr_budget']} text lines a photo\n")
    print("TPR at FPR 1% (right brand) per tier; FPR on the negative tiers at that threshold\n")
    print("| signal | " + " | ".join(f"{t} ({res['table']['similarity']['tiers'][t]['n']})" for t in tiers) + " | all positive | FPR |")
    print("|---|" + "---:|" * (len(tiers) + 2))
    for name, r in res["table"].items():
        cells = [f"{r['tiers'][t]['tpr']:.3f}" + (f" ({r['tiers'][t]['right']:.3f})" if r["tiers"][t]["right"] is not None else "")
                 for t in tiers]
        print(f"| {name} | " + " | ".join(cells) + f" | {r['all']['tpr']:.3f} ({r['all']['right']:.3f}) | {r['fpr']:.3f} |")
    st = res["stage_seconds"]
    total = sum(st.values())
    print(f"\nlistings with some evidence of each signal: {res['seen']}")
    print(f"scan {res['seconds']:.0f} s ({res['images_per_s']} img/s); stage seconds {st}; verify + evidence (OCR) "
          f"{(st.get('verify', 0) + st.get('evidence', 0)) / max(total, 1e-9):.0%} of the stages' time; index build {res['index_s']:.0f} s")
    t0, t1 = res["first_pass"]["seconds"], res["seconds"]
    print(f"the same listings without verification or OCR (the first pass): {t0:.0f} s; with them, gated: {t1:.0f} s "
          f"(they take {1 - t0 / t1:.0%} of the scan's wall time)")
    print(f"combiner weights (standardised features), one per half: {res['weights']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--names", help="simple-icons data/simple-icons.json (default: a built-in list of 14 brands)")
    ap.add_argument("--text-samples", type=int, default=1000, help="brands whose names are varied for the text-only part")
    ap.add_argument("--ocr-crops", type=int, default=60, help="wordmark crops read by OCR (a third each variant)")
    ap.add_argument("--ocr-negatives", type=int, default=30, help="non-brand word crops read by OCR")
    ap.add_argument("--listings", type=int, default=400, help="synthetic listings for the per-signal table (0: skip)")
    ap.add_argument("--ocr-budget", default=f"{OcrConfig.lines}", help="text lines (or regions) OCR reads a photo, comma-separated (listings part)")
    ap.add_argument("--ocr-where", default="text", help="what OCR reads, comma-separated: text (where the detector finds it), candidates "
                                                        "(the best matches' regions), photo")
    ap.add_argument("--swapped", type=int, default=100, help="extra listings showing a letter-swapped registered wordmark")
    ap.add_argument("--min-confidence", type=float, default=OcrConfig.min_confidence, help="recognised lines below this are dropped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a few samples, for the test suite")
    ap.add_argument("--real", help="a real-photo bench folder (`markguard data realbench`): only the per-signal table on it")
    ap.add_argument("--every", type=int, default=4, help="with --real: scan every N-th listing of each tier")
    ap.add_argument("--bank", type=int, default=256, help="with --real: background pictures of the index's bank")
    ap.add_argument("--model", help="with --real: checkpoint folder (default: the shipped model)")
    ap.add_argument("--out", help="with --real: keep the index, scan and results here (default: a temporary folder)")
    ap.add_argument("--review-fpr", type=float, default=0.05,
                    help="with --real: the review threshold the verification gate works from, as the share of negatives reaching it")
    args = ap.parse_args(argv)
    if args.real:
        import tempfile

        print(f"# bench_evidence --real  {platform.processor() or platform.machine()}  {time.strftime('%Y-%m-%d %H:%M')}")
        with tempfile.TemporaryDirectory(prefix="bench-evidence-real-") as tmp:
            work = Path(args.out or tmp)
            res = real_part(Path(args.real), args.every, work, bank=args.bank, ocr_budget=float(args.ocr_budget), model=args.model,
                            review_fpr=args.review_fpr)
        print_real(res, args)
        if args.out:
            (Path(args.out) / "bench_evidence_real.json").write_text(json.dumps(res, indent=2))
        return 0
    if args.quick:
        args.text_samples, args.ocr_crops, args.ocr_negatives, args.listings, args.swapped = 10, 3, 1, 16, 4
    rng = np.random.default_rng(args.seed)
    names = read_names(args.names)
    t0 = time.perf_counter()
    lexicon = Lexicon(names)
    build_s = time.perf_counter() - t0
    print(f"# bench_evidence  {platform.processor() or platform.machine()}  {time.strftime('%Y-%m-%d')}")
    print(f"lexicon: {len(names)} brands, {len(lexicon)} folded names, built in {build_s:.2f} s")

    text = text_part(names, lexicon, args.text_samples, rng)
    print("\n## text match alone\n")
    print("| variant | name length (folded) | names | top-1 right brand | names the brand | top-1 another brand |")
    print("|---|---|---:|---:|---:|---:|")
    for (variant, b), r in sorted(text["rows"].items()):
        print(f"| {variant} | {b} | {r['n']} | {r['top1'] / r['n']:.3f} | {r['named'] / r['n']:.3f} | {r['wrong_top1'] / r['n']:.3f} |")
    print(f"\nnon-brand words matched to some brand: {text['false_matches']} of {text['negatives']} "
          f"({text['false_matches'] / text['negatives']:.3%}); e.g. {text['false_examples']}")
    print(f"match cost: {text['us_per_match']:.0f} us a text against {len(lexicon)} names")

    ocr = ocr_part(names, lexicon, args.ocr_crops, np.random.default_rng(args.seed + 1), args.ocr_negatives,
                   OcrConfig(min_confidence=args.min_confidence))
    print(f"\n## OCR + text match ({ocr['fonts']} fonts, lines read with confidence >= {args.min_confidence})\n")
    print("| variant | crops | read some text | top-1 right brand | names the brand | top-1 another brand | failed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant, r in ocr["rows"].items():
        print(f"| {variant} | {r['n']} | {r['read'] / r['n']:.3f} | {r['top1'] / r['n']:.3f} | {r['named'] / r['n']:.3f} | "
              f"{r['wrong_top1'] / r['n']:.3f} | {r['failed']} |")
    print(f"\nnon-brand wordmarks matched to some brand: {ocr['false_matches']} of {ocr['negatives']}; e.g. {ocr['false_examples']}")
    s, c = ocr["seconds"], ocr["cpu_seconds"]
    print(f"OCR cost a crop (1 ONNX Runtime thread): wall median {s['median'] * 1000:.0f} ms, p90 {s['p90'] * 1000:.0f} ms, "
          f"mean {s['mean'] * 1000:.0f} ms; CPU median {c['median'] * 1000:.0f} ms")
    print("examples (variant, drawn, read, matched, truth):")
    for e in ocr["examples"]:
        print(f"  {e}")
    if args.listings:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="bench-evidence-") as tmp:
            budgets = [float(b) for b in args.ocr_budget.split(",")]
            res = listings_part(args.listings, args.seed, budgets, Path(tmp), args.swapped, args.min_confidence,
                                args.ocr_where.split(","))
        for (budget, where), b in res["budgets"].items():
            print(f"\n## per signal, OCR of the {where}, {budget:g} lines a photo: {res['listings']} synthetic listings "
                  f"(fitted on every other one, scored on the {b['test']} others: {b['positives']} positive, {b['negatives']} "
                  f"negative, {b['letter_swapped']} with a letter-swapped wordmark; {b['photos_read']} read by OCR)\n")
            print("| signal | TPR at FPR 1% | FPR there | TPR, right brand | TPR on letter-swapped wordmarks |")
            print("|---|---:|---:|---:|---:|")
            for name, r in b["table"].items():
                lt = "-" if r["tpr_letters"] is None else f"{r['tpr_letters']:.3f}"
                print(f"| {name} | {r['tpr']:.3f} | {r['fpr']:.3f} | {r['tpr_right_brand']:.3f} | {lt} |")
            share = b["ocr_s"] / (res["scan_s"] + b["ocr_s"])
            print(f"\nscan {res['scan_s']:.1f} s, evidence + OCR {b['ocr_s']:.1f} s ({share:.0%} of the total); "
                  f"combiner weights {b['weights']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
