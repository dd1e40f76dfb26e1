"""The scan runner: read → decode → regions → embed → search → decide → write, each stage timed.

``run_scan`` is what ``markguard scan`` calls; ``scan_rows`` is the same pipeline as a generator of
typed rows, for calibration and tests.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from markguard.checkpoint import ModelCard, atomic_write_text, load_checkpoint
from markguard.datasets.listings import ListingItem, open_dump, shard
from markguard.errors import MarkguardError
from markguard.infer.decide import Match, Policy, resolve_policy
from markguard.infer.embed import embed_regions, feature_maps
from markguard.infer.loader import Batch, DecodedBatches, batch_loader
from markguard.infer.regions import RegionMode, grid_boxes, select_regions
from markguard.infer.search import search_batch
from markguard.infer.writer import RESULTS, ResultsWriter

STATE = "scan.json"
SUMMARY = "summary.json"
INDEX_META = "markguard.json"  # beside an index: the model that built it and the brands' settings


@dataclass
class ScanRow:
    listing_id: str
    image: str
    seller_id: str | None
    status: str
    score: float | None
    brand: str | None
    mark: str | None
    box: list[int] | None
    matches: list[Match]
    error: str | None = None

    def to_json(self) -> dict:
        return {"listing_id": self.listing_id, "image": self.image, "seller_id": self.seller_id, "status": self.status,
                "score": None if self.score is None else round(float(self.score), 4), "brand": self.brand, "mark": self.mark,
                "box": self.box, "matches": [m.to_json() for m in self.matches], "error": self.error}


@dataclass
class Searcher:
    """One index with the model that built it."""

    name: str
    path: Path
    index: object
    model: torch.nn.Module
    card: ModelCard
    brands: dict[str, dict]


@dataclass
class ScanOptions:
    regions: str | None = None  # None: the model card's region mode
    batch_size: int = 16
    workers: int = 1
    device: str = "cpu"
    precision: str = "auto"
    k: int = 3
    max_matches: int = 5
    flag: float | None = None
    review: float | None = None
    shard: tuple[int, int] | None = None
    verify: bool = False  # geometric check of the best candidates (infer/verify.py)


@dataclass
class StageTimes:
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("decode", "regions", "embed", "search", "verify", "decide", "write"), 0.0))

    def add(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - t0
        return now


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MarkguardError("--device cuda given but no CUDA GPU is visible; use --device cpu")
    return device


def load_searchers(index_paths: list[str | Path], model_path: str | Path | None, device: str) -> list[Searcher]:
    """Open each index with its model; the model's fingerprint must be the one the index was built with."""
    from markguard.infer.index import MarkIndex

    searchers, models = [], {}
    for p in index_paths:
        p = Path(p)
        meta_path = p / INDEX_META
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        mpath = model_path if model_path is not None else meta.get("model")
        if mpath is not None and not Path(mpath).exists() and model_path is None:
            mpath = None  # the recorded model moved: fall back to the shipped default, the fingerprint check decides
        key = str(mpath)
        if key not in models:
            models[key] = load_checkpoint(mpath, device=device)
        model, card = models[key]
        index = MarkIndex.load(p, expect_fingerprint=card.fingerprint)
        name = p.name if len(index_paths) > 1 else None
        searchers.append(Searcher(name or "", p, index, model, card, meta.get("brands", {})))
    return searchers


def _embed_tiles(s: Searcher, x: torch.Tensor, boxes: list[torch.Tensor], device: str, precision: str):
    """The slow baseline: crop every region, resize it to the training input and run the backbone on it."""
    from torchvision.ops import roi_align

    size = s.card.input_size
    crops = roi_align(x, [b for b in boxes], output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    out = []
    for i in range(0, len(crops), 64):
        full = torch.tensor([[0.0, 0.0, size, size]]).repeat(len(crops[i : i + 64]), 1)
        out.append(embed_regions(s.model, s.card, crops[i : i + 64], list(full.split(1)), device=device, precision=precision).vectors)
    return torch.cat(out)


def process_batch(batch: Batch, searchers: list[Searcher], policy: Policy, opts: ScanOptions, times: StageTimes) -> list[ScanRow]:
    """Regions, embed, search and decide for one decoded batch."""
    t = time.perf_counter()
    per_image: list[list[Match]] = [[] for _ in batch.ok]
    for s in searchers:
        mode = RegionMode(opts.regions or s.card.regions.get("mode", "grid"))
        x, valid = batch.x, batch.valid
        factor = 1.0
        if x.shape[-1] != s.card.scan_size and len(x):
            factor = s.card.scan_size / x.shape[-1]
            x = F.interpolate(x, size=(s.card.scan_size, s.card.scan_size), mode="bilinear", align_corners=False, antialias=True)
        if len(x) == 0:
            continue
        valid_s = [(max(1, int(w * factor)), max(1, int(h * factor))) for w, h in valid]
        if mode is RegionMode.tiles:
            boxes = select_regions(RegionMode.grid, s.model, s.card, None, valid_s, x.shape[-1])
            t = times.add("regions", t)
            vec = _embed_tiles(s, x, boxes, opts.device, opts.precision)
            counts = [len(b) for b in boxes]
            t = times.add("embed", t)
        else:
            fmap = feature_maps(s.model, x, device=opts.device, precision=opts.precision)
            t = times.add("embed", t)
            boxes = select_regions(mode, s.model, s.card, fmap, valid_s, x.shape[-1])
            t = times.add("regions", t)
            emb = embed_regions(s.model, s.card, x, boxes, fmap=fmap)
            vec, counts = emb.vectors, emb.counts
            t = times.add("embed", t)
        boxes_orig = [(b.numpy() / factor) * np.array([fx, fy, fx, fy], dtype=np.float32) for b, (fx, fy) in zip(boxes, batch.to_orig)]
        for i, (b, (w, h)) in enumerate(zip(boxes_orig, batch.orig_size)):
            np.clip(b, 0, [w, h, w, h], out=b)
        found = search_batch(s.index, vec.float().cpu().numpy(), counts, boxes_orig, k=opts.k, max_matches=opts.max_matches,
                             index_name=s.name or None)
        t = times.add("search", t)
        if opts.verify:
            from markguard.infer.verify import verify_matches

            found = verify_matches(x, found, s, batch.to_orig, factor)
            t = times.add("verify", t)
        for i, matches in enumerate(found):
            per_image[i].extend(matches)
    rows = []
    ok_pos = {pos: i for i, pos in enumerate(batch.ok)}
    for pos, item in enumerate(batch.items):
        if pos in batch.errors:
            rows.append(ScanRow(item.listing_id, item.image, item.seller_id, "error", None, None, None, None, [], batch.errors[pos]))
            continue
        matches = sorted(per_image[ok_pos[pos]], key=lambda m: -m.score)
        status, decider = policy.decide(matches, item.seller_id)
        best = matches[0].score if matches else None
        shown = [m for m in matches if m.score >= policy.thresholds(m.brand)[1]][: opts.max_matches]
        if status == "pass":
            rows.append(ScanRow(item.listing_id, item.image, item.seller_id, "pass", best, None, None, None, shown))
        else:
            rows.append(ScanRow(item.listing_id, item.image, item.seller_id, status, decider.score, decider.brand, decider.mark, decider.box, shown))
    times.add("decide", t)
    return rows


def _items_fn(source: str, shard_spec: tuple[int, int] | None):
    items = open_dump(source)
    return shard(items, *shard_spec) if shard_spec else items


def scan_rows(source: str | Path, searchers: list[Searcher], policy: Policy, opts: ScanOptions, *, skip: int = 0,
              times: StageTimes | None = None, full_matches: bool = False) -> Iterator[ScanRow]:
    """The pipeline as a generator of rows, in input order, after skipping ``skip`` inputs."""
    times = times or StageTimes()
    size = max(s.card.scan_size for s in searchers)
    card = searchers[0].card
    open_dump(source)  # fail here, in the main process, on a missing or unreadable dump
    ds = DecodedBatches(functools.partial(_items_fn, str(source), opts.shard), size=size, mean=card.mean, std=card.std,
                        batch_size=opts.batch_size, skip=skip)
    t = time.perf_counter()
    for batch in batch_loader(ds, opts.workers):
        times.seconds["decode"] += batch.decode_s
        yield from process_batch(batch, searchers, policy, opts, times)


def _state(source, searchers: list[Searcher], opts: ScanOptions) -> dict:
    return {"input": str(Path(source).resolve()), "shard": list(opts.shard) if opts.shard else None,
            "indexes": [{"path": str(s.path.resolve()), "fingerprint": s.card.fingerprint} for s in searchers],
            "regions": opts.regions}


class Progress:
    """A progress bar on a terminal, a log line every few seconds elsewhere: done, images/s, ETA, flagged."""

    def __init__(self, total: int | None, done: int, stream=sys.stderr, every_s: float = 10.0, enabled: bool = True):
        self.total, self.done, self.flagged = total, done, 0
        self.start_done = done
        self.t0 = time.monotonic()
        self.last = self.t0
        self.stream, self.every_s = stream, every_s
        self.enabled = enabled
        self.bar = None
        if enabled and stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="img", file=stream, dynamic_ncols=True)

    def update(self, n: int, flagged: int) -> None:
        self.done += n
        self.flagged += flagged
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(flagged=self.flagged)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        rate = (self.done - self.start_done) / max(1e-9, time.monotonic() - self.t0)
        eta = f", ETA {(self.total - self.done) / rate:.0f}s" if self.total and rate > 0 else ""
        of = f"/{self.total}" if self.total else ""
        return f"scan: {self.done}{of} images, {rate:.1f} img/s{eta}, flagged {self.flagged}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_scan(source: str | Path, index_paths: list[str | Path], out_dir: str | Path, *, model: str | Path | None = None,
             opts: ScanOptions | None = None, resume: bool = False, progress: bool = True) -> dict:
    """Scan a dump into ``out_dir``; returns the summary. Resumable; a finished scan is not redone."""
    from markguard.config import versions

    opts = opts or ScanOptions()
    opts = dataclasses.replace(opts, device=resolve_device(opts.device))
    out_dir = Path(out_dir)
    if not index_paths:
        raise MarkguardError("no index given; pass -i INDEX (built with `markguard index build GALLERY -o INDEX`)")
    searchers = load_searchers(index_paths, model, opts.device)
    open_dump(source)
    brands: dict[str, dict] = {}
    for s in searchers:
        brands.update(s.brands)
    card = searchers[0].card
    policy = resolve_policy(card.thresholds, brands, flag=opts.flag, review=opts.review)
    state = _state(source, searchers, opts)

    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE
    if state_path.exists():
        previous = json.loads(state_path.read_text())
        if previous != state:
            raise MarkguardError(f"{out_dir}: holds the output of another scan ({previous.get('input')}); choose a new -o folder or delete it")
        if (out_dir / RESULTS).exists() and (out_dir / SUMMARY).exists():
            summary = json.loads((out_dir / SUMMARY).read_text())
            summary["note"] = "already finished; nothing to do"
            return summary
        if (out_dir / "results.jsonl.partial").exists() and not resume:
            raise MarkguardError(f"{out_dir}: an unfinished scan is here; pass --resume to continue it, or delete the folder to start over")
    elif any(out_dir.iterdir()):
        raise MarkguardError(f"{out_dir}: folder is not empty and holds no markguard scan; choose a new -o folder")
    atomic_write_text(state_path, json.dumps(state, indent=2))

    writer = ResultsWriter(out_dir, resume=resume)
    skipped = writer.rows
    counts: Counter = Counter()
    if skipped:  # counts of the rows already written, so the summary covers the whole scan
        with open(writer.path, encoding="utf-8") as f:
            counts.update(json.loads(line)["status"] for line in f)
    total = None
    try:
        from markguard.datasets.listings import count_dump

        total = count_dump(source)
        if opts.shard:
            i, n = opts.shard
            total = len(range(i, total, n))
    except (ImportError, OSError, MarkguardError):
        total = None
    bar = Progress(total, skipped, enabled=progress)
    times = StageTimes()
    t_start = time.perf_counter()
    done = 0
    try:
        pending: list[dict] = []
        for row in scan_rows(source, searchers, policy, opts, skip=skipped, times=times):
            pending.append(row.to_json())
            counts[row.status] += 1
            if len(pending) >= opts.batch_size:
                t = time.perf_counter()
                writer.write(pending)
                times.add("write", t)
                bar.update(len(pending), sum(r["status"] == "flag" for r in pending))
                done += len(pending)
                pending = []
        t = time.perf_counter()
        writer.write(pending)
        done += len(pending)
        bar.update(len(pending), sum(r["status"] == "flag" for r in pending))
        results = writer.finish()
        times.add("write", t)
    finally:
        writer.close()
        bar.close()
    elapsed = time.perf_counter() - t_start
    references = {}
    for s in searchers:
        for rec in s.index.records():
            references.setdefault(f"{rec.brand}/{rec.mark}", rec.source)
    summary = {
        "input": str(Path(source).resolve()),
        "results": str(results),
        "images": sum(counts.values()),
        "images_this_run": done,
        "counts": {k: counts.get(k, 0) for k in ("flag", "review", "pass", "allowed", "error")},
        "seconds": round(elapsed, 3),
        "images_per_s": round(done / elapsed, 2) if elapsed > 0 else None,
        "stage_seconds": {k: round(v, 3) for k, v in times.seconds.items()},
        "model": {"fingerprint": card.fingerprint, "backbone": card.backbone, "scan_size": card.scan_size},
        "indexes": [{"path": str(s.path.resolve()), "name": s.name or None, "fingerprint": s.card.fingerprint,
                     "vectors": len(s.index)} for s in searchers],
        "policy": policy.to_json(),
        "options": dataclasses.asdict(opts),
        "versions": versions(),
        "references": references,
    }
    atomic_write_text(out_dir / SUMMARY, json.dumps(summary, indent=2))
    return summary
