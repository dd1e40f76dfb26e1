"""The demo: synth → train → index → scan → report on generated data, scored against its truth."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from markguard.config import load_layered
from markguard.datasets.registry import load_gallery
from markguard.datasets.synth import check_synth_args, synth_dataset
from markguard.errors import MarkguardError
from markguard.infer.build import build_index
from markguard.infer.report import write_report
from markguard.infer.scan import ScanOptions, run_scan
from markguard.train.config import TrainConfig, resolve_recipe
from markguard.train.evaluate import score_scan
from markguard.train.loop import load_training_marks, train


def run_demo(out: str | Path, *, steps: int | None = None, listings: int = 200, brands: int = 12, seed: int = 0,
             overrides: list[str] | None = None, log=None) -> dict:
    log = log or (lambda s: (print(s, file=sys.stderr), sys.stderr.flush()))
    out = Path(out)
    check_synth_args(out, brands=brands, listings=listings)
    if listings < 1:
        raise MarkguardError(f"--listings {listings} must be at least 1: the demo scans the listings it generates")
    if steps is not None and steps < 1:
        raise MarkguardError(f"--steps {steps} must be at least 1")
    if out.exists() and any(out.iterdir()):
        raise MarkguardError(f"{out}: folder is not empty; the demo writes a fresh one (give --out NEW or delete it)")
    t0 = time.perf_counter()
    timings = {}
    log(f"demo: 1/5 synth: {brands} brands, {listings} listing photos → {out / 'data'}")
    paths = synth_dataset(out / "data", brands=brands, listings=listings, seed=seed)
    timings["synth"] = time.perf_counter() - t0
    extra = [f"gallery={paths['gallery']}", f"seed={seed}"] + ([f"steps={steps}"] if steps else []) + list(overrides or [])
    cfg = load_layered(TrainConfig, resolve_recipe("demo"), extra)
    fill = len(load_training_marks(cfg)[0]) * cfg.m_per_class  # one class a mark: a small demo sizes its own batch
    if cfg.sampler == "m_per_class" and fill < cfg.batch_size and not any(o.startswith("batch_size=") for o in overrides or []):
        cfg = load_layered(TrainConfig, resolve_recipe("demo"), extra + [f"batch_size={fill}"])
    log(f"demo: 2/5 train: {cfg.backbone}, {cfg.steps} steps of {cfg.batch_size} → {out / 'model'}")
    t = time.perf_counter()
    card = train(cfg, out / "model", log=log)
    timings["train"] = time.perf_counter() - t
    log(f"demo: 3/5 index: {paths['gallery']} → {out / 'index'}")
    t = time.perf_counter()
    build_index(paths["gallery"], out / "index", model=out / "model", kind="flat")
    timings["index"] = time.perf_counter() - t
    log(f"demo: 4/5 scan: {paths['manifest']} → {out / 'scan'}")
    t = time.perf_counter()
    summary = run_scan(paths["manifest"], [out / "index"], out / "scan", opts=ScanOptions(workers=1, batch_size=16))
    timings["scan"] = time.perf_counter() - t
    log("demo: 5/5 report")
    report = write_report(out / "scan")
    gallery = load_gallery(paths["gallery"])
    authorized = {b.id: b.authorized_sellers for b in gallery.brands.values()}
    score = score_scan(out / "scan" / "results.jsonl", paths["truth"], authorized=authorized)
    result = {
        "data": str(out / "data"), "model": str(out / "model"), "index": str(out / "index"),
        "results": summary["results"], "report": str(report),
        "thresholds": {"flag": card.thresholds.get("flag"), "review": card.thresholds.get("review")},
        "counts": summary["counts"], "score": score.to_json(),
        "seconds": {k: round(v, 1) for k, v in timings.items()} | {"total": round(time.perf_counter() - t0, 1)},
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2))
    return result
