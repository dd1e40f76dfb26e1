"""The scan runner: read → decode → regions → embed → search → decide → write, each stage timed.

``run_scan`` is what ``markguard scan`` calls; ``scan_rows`` is the same pipeline as a generator of
typed rows, for calibration and tests.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from markguard.checkpoint import CARD, DEFAULT_MODEL_DIR, ModelCard, load_checkpoint
from markguard.datasets.listings import open_dump, shard
from markguard.errors import MarkguardError
from markguard.fsio import atomic_write_text
from markguard.infer.decide import Policy, resolve_policy
from markguard.infer.embed import embed_regions, feature_maps
from markguard.infer.loader import Batch, DecodedBatches, RunFailure, batch_loader, finish_decode, renormalise
from markguard.infer.regions import RegionMode, select_regions
from markguard.infer.search import search_batch
from markguard.infer.results import PARQUET, PARTIAL, RESULTS, STATE, SUMMARY, Match, ScanRow, read_results, read_summary
from markguard.infer.writer import BackgroundWriter, ResultsWriter, require_pyarrow, write_parquet
from markguard.model import compile_backbone



@dataclass
class Searcher:
    """One index with the model that built it."""

    name: str
    path: Path
    index: object
    model: torch.nn.Module
    card: ModelCard
    brands: dict[str, dict]
    model_dir: Path | None = None  # where the model was loaded from (None: the shipped default); engines reload it


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
    backend: str = "torch"  # torch | onnx | torchscript (infer/backends.py)
    engine: str = "local"  # local | ray (infer/ray_engine.py)
    address: str | None = None  # Ray cluster address; None starts a local instance
    actors: int | None = None  # Ray: model-holding actors (default: one per GPU, or one per 2 CPUs)
    decode: str = "auto"  # cpu (Pillow, in the loader workers) | device (JPEGs by torchvision.io on the model's device) | auto
    compile: str | None = None  # a torch.compile backend for the backbone ("inductor"); None: eager


STAGES = ("decode", "regions", "embed", "search", "verify", "decide", "write")  # always reported, in this order


@dataclass
class StageTimes:
    """Seconds spent in each stage; a stage not in STAGES is added the first time it is timed."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - t0
        return now

    def merge(self, seconds: dict[str, float]) -> None:
        for k, v in seconds.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + v


def resolve_decode(decode: str, device: str) -> str:
    """auto: JPEGs decode on the GPU when the model runs on one (nvJPEG), else on the CPU with Pillow."""
    if decode == "auto":
        return "device" if device.startswith("cuda") else "cpu"
    if decode not in ("cpu", "device"):
        raise MarkguardError(f"unknown decode {decode!r}; choose cpu, device or auto")
    return decode


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MarkguardError("--device cuda given but no CUDA GPU is visible; use --device cpu")
    return device


def load_searchers(index_paths: list[str | Path], model_path: str | Path | None, device: str, backend: str = "torch",
                   *, compile: str | None = None) -> list[Searcher]:
    """Open each index with its model; the model's fingerprint must be the one the index was built with.

    ``compile`` names a torch.compile backend for each model's backbone (PyTorch backend only).
    """
    from markguard.infer.index import MarkIndex

    searchers, models = [], {}
    names = [Path(p).name if len(index_paths) > 1 else "" for p in index_paths]
    for name in set(names):
        if names.count(name) > 1:
            raise MarkguardError(f"two indexes are named {name!r}; matches say which index they came from by folder name, so give them different folder names")
    for p, name in zip(index_paths, names):
        p = Path(p)
        index = MarkIndex.load(p)  # the vectors and their metadata, from one save
        meta = index.require_meta()
        mpath = model_path if model_path is not None else meta.get("model")
        if mpath is not None and not Path(mpath).exists() and model_path is None:
            mpath = None  # the recorded model moved: fall back to the shipped default, the fingerprint check decides
        key = str(mpath)
        if key not in models:
            if backend == "torch":
                models[key] = load_checkpoint(mpath, device=device)
                if compile:
                    compile_backbone(models[key][0], compile)
            else:
                from markguard.infer.backends import load_backend

                models[key] = load_backend(mpath, backend, device=device)
        model, card = models[key]
        try:
            index.require_fingerprint(card.fingerprint)
        except MarkguardError as e:
            hint = "" if model_path is None else f" (model given with -m {model_path})"
            raise MarkguardError(f"{e}{hint}") from None
        if device.startswith("cuda"):
            sys.stderr.write(f"index {p}: {index.use_gpu()}\n")
        searchers.append(Searcher(name, p, index, model, card, meta.get("brands", {}), None if mpath is None else Path(mpath)))
    return searchers


def region_mode(s: Searcher, opts: ScanOptions) -> RegionMode:
    """The region mode a searcher scans with: ``--regions`` if given, else its model card's ``regions.mode``."""
    if opts.regions:
        return RegionMode.named(opts.regions)
    card_file = (s.model_dir or DEFAULT_MODEL_DIR) / CARD
    return RegionMode.named(s.card.regions.get("mode", "grid"), f"{card_file}: field regions.mode")


def _embed_tiles(s: Searcher, x: torch.Tensor, boxes: list[torch.Tensor], device: str, precision: str):
    """The slow baseline: crop every region, resize it to the training input and run the backbone on it."""
    from torchvision.ops import roi_align

    size = s.card.input_size
    crops = roi_align(x, [b.to(x.device, x.dtype) for b in boxes], output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    out = []
    for i in range(0, len(crops), 64):
        full = torch.tensor([[0.0, 0.0, size, size]]).repeat(len(crops[i : i + 64]), 1)
        out.append(embed_regions(s.model, s.card, crops[i : i + 64], list(full.split(1)), device=device, precision=precision).vectors)
    return torch.cat(out)


def process_batch(batch: Batch, searchers: list[Searcher], policy: Policy, opts: ScanOptions, times: StageTimes) -> list[ScanRow]:
    """Regions, embed, search and decide for one decoded batch (finishing its decode on the device first, if asked)."""
    t = time.perf_counter()
    if batch.pending:
        finish_decode(batch, size=max(s.card.scan_size for s in searchers), device=opts.device)
        t = times.add("decode", t)
    per_image: list[list[Match]] = [[] for _ in batch.ok]
    for s in searchers:
        mode = region_mode(s, opts)
        valid = batch.valid
        # decoded once for every index; each model sees the photo normalised by its own card
        x = renormalise(batch.x, valid, (batch.mean, batch.std), (s.card.mean, s.card.std))
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
            for matches, (w, h) in zip(found, batch.orig_size):  # a tightened box may reach past the photo
                for m in matches:
                    if m.box is not None:
                        m.box = [min(max(0, v), lim) for v, lim in zip(m.box, (w, h, w, h))]
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
        shown = [m for m in matches if m.score >= policy.thresholds(m.brand, m.index)[1]][: opts.max_matches]
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
    for s in searchers:
        region_mode(s, opts)  # a bad mode fails here, in the main process, not in the first batch
    if opts.engine == "ray":
        from markguard.infer.ray_engine import ray_rows

        yield from ray_rows(source, searchers, policy, opts, skip=skip, times=times)
        return
    if opts.engine != "local":
        raise MarkguardError(f"unknown engine {opts.engine!r}; choose local or ray")
    size = max(s.card.scan_size for s in searchers)
    card = searchers[0].card
    open_dump(source)  # fail here, in the main process, on a missing or unreadable dump
    ds = DecodedBatches(functools.partial(_items_fn, str(source), opts.shard), size=size, mean=card.mean, std=card.std,
                        batch_size=opts.batch_size, skip=skip, device_jpeg=resolve_decode(opts.decode, opts.device) == "device")
    for batch in batch_loader(ds, opts.workers):
        if isinstance(batch, RunFailure):
            raise MarkguardError(batch.message)
        times.merge({"decode": batch.decode_s})
        yield from process_batch(batch, searchers, policy, opts, times)


def _state(source, searchers: list[Searcher], opts: ScanOptions) -> dict:
    return {"input": str(Path(source).resolve()), "shard": list(opts.shard) if opts.shard else None,
            "indexes": [{"path": str(s.path.resolve()), "fingerprint": s.card.fingerprint} for s in searchers],
            "regions": opts.regions}


class Progress:
    """A progress bar on a terminal, a log line every few seconds elsewhere: done, images/s, ETA, flagged."""

    def __init__(self, total: int | None, done: int, stream=None, every_s: float = 10.0, enabled: bool = True):
        self.total, self.done, self.flagged = total, done, 0
        self.start_done = done
        self.t0 = time.monotonic()
        self.last = self.t0
        self.stream = stream if stream is not None else sys.stderr  # looked up now, so redirected stderr is honoured
        self.every_s = every_s
        self.enabled = enabled
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="img", file=self.stream, dynamic_ncols=True)

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
            self._log()

    def _log(self) -> None:
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
        elif self.enabled:
            self._log()  # a log always ends with where the scan stopped


FORMATS = ("jsonl", "parquet")


def _total(source, shard_spec) -> int | None:
    """How many rows the scan will write (for the ETA), or None when the dump cannot be counted cheaply."""
    from markguard.datasets.listings import count_dump

    try:
        total = count_dump(source)
    except (ImportError, OSError, MarkguardError):
        return None
    if shard_spec:
        i, n = shard_spec
        total = len(range(i, total, n))
    return total


def _policy(searchers: list[Searcher], opts: ScanOptions) -> Policy:
    brands: dict[str, dict] = {}
    for s in searchers:
        brands.update(s.brands)
    per_index = None
    if len({s.card.fingerprint for s in searchers}) > 1:  # several models: each index is judged by its own calibration
        per_index = {s.name: s.card.thresholds for s in searchers}
    return resolve_policy(searchers[0].card.thresholds, brands, flag=opts.flag, review=opts.review, per_index_cards=per_index)


def run_scan(source: str | Path, index_paths: list[str | Path], out_dir: str | Path, *, model: str | Path | None = None,
             opts: ScanOptions | None = None, resume: bool = False, progress: bool = True, formats: tuple[str, ...] = ("jsonl",),
             progress_stream=None, progress_every_s: float = 10.0) -> dict:
    """Scan a dump into ``out_dir``; returns the summary. Resumable; a finished scan is not redone."""
    from markguard.config import versions

    opts = opts or ScanOptions()
    opts = dataclasses.replace(opts, device=resolve_device(opts.device))
    opts = dataclasses.replace(opts, decode=resolve_decode(opts.decode, opts.device))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise MarkguardError(f"unknown output format(s) {unknown}; choose from {', '.join(FORMATS)}")
    if "parquet" in formats:
        require_pyarrow()
    if opts.engine not in ("local", "ray"):
        raise MarkguardError(f"unknown engine {opts.engine!r}; choose local or ray")
    out_dir = Path(out_dir)
    if not index_paths:
        raise MarkguardError("no index given; pass -i INDEX (built with `markguard index build GALLERY -o INDEX`)")
    searchers = load_searchers(index_paths, model, opts.device, opts.backend, compile=opts.compile)
    open_dump(source)
    card = searchers[0].card
    policy = _policy(searchers, opts)
    state = _state(source, searchers, opts)

    if out_dir.exists() and not out_dir.is_dir():
        raise MarkguardError(f"{out_dir}: is a file; -o names the output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE
    if state_path.exists():
        try:
            previous = json.loads(state_path.read_text())
        except json.JSONDecodeError:
            previous = {}
        if previous != state:
            raise MarkguardError(f"{out_dir}: holds the output of another scan ({previous.get('input')}); choose a new -o folder or delete it")
        if (out_dir / RESULTS).exists() and (out_dir / SUMMARY).exists():
            summary = read_summary(out_dir)
            if "parquet" in formats and not (out_dir / PARQUET).exists():
                summary["parquet"] = str(write_parquet(out_dir / RESULTS, out_dir / PARQUET))
                atomic_write_text(out_dir / SUMMARY, json.dumps(summary, indent=2))
            summary["note"] = "already finished; nothing to do"
            return summary
        if (out_dir / PARTIAL).exists() and not resume:
            raise MarkguardError(f"{out_dir}: an unfinished scan is here; pass --resume to continue it, or delete the folder to start over")
    elif any(out_dir.iterdir()):
        raise MarkguardError(f"{out_dir}: folder is not empty and holds no markguard scan; choose a new -o folder")
    atomic_write_text(state_path, json.dumps(state, indent=2))

    writer = ResultsWriter(out_dir, resume=resume or (out_dir / RESULTS).exists())
    skipped = writer.rows
    counts: Counter = Counter()
    if skipped:  # counts of the rows already written, so the summary covers the whole scan
        counts.update(row.status for row in read_results(writer.path))
    total = _total(source, opts.shard)
    bar = Progress(total, skipped, stream=progress_stream, every_s=progress_every_s, enabled=progress)
    times = StageTimes()
    t_start = time.perf_counter()
    done = 0
    bg = BackgroundWriter(writer)
    try:
        pending: list[dict] = []
        for row in scan_rows(source, searchers, policy, opts, skip=skipped, times=times):
            pending.append(row.to_json())
            counts[row.status] += 1
            if len(pending) >= opts.batch_size:
                bg.write(pending)
                bar.update(len(pending), sum(r["status"] == "flag" for r in pending))
                done += len(pending)
                pending = []
        bg.write(pending)
        done += len(pending)
        bar.update(len(pending), sum(r["status"] == "flag" for r in pending))
        t = time.perf_counter()
        results = bg.finish()
        times.merge({"write": bg.seconds + (time.perf_counter() - t)})
    finally:
        bg.close()
        bar.close()
    elapsed = time.perf_counter() - t_start
    extra = {}
    if "parquet" in formats:
        t = time.perf_counter()
        extra["parquet"] = str(write_parquet(results, out_dir / PARQUET))
        times.add("write", t)
    references = {}
    for s in searchers:
        for rec in s.index.records():
            references.setdefault(f"{rec.brand}/{rec.mark}", rec.source)
    summary = {
        "input": str(Path(source).resolve()),
        "results": str(results),
        **extra,
        "images": sum(counts.values()),
        "images_this_run": done,
        "counts": {k: counts.get(k, 0) for k in ("flag", "review", "pass", "allowed", "error")},
        "seconds": round(elapsed, 3),
        "images_per_s": round(done / elapsed, 2) if elapsed > 0 else None,
        "stage_seconds": {k: round(v, 3) for k, v in times.seconds.items()},
        "model": {"fingerprint": card.fingerprint, "backbone": card.backbone, "scan_size": card.scan_size},
        "indexes": [{"path": str(s.path.resolve()), "name": s.name or None, "fingerprint": s.card.fingerprint,
                     "model": str(s.model_dir.resolve()) if s.model_dir else None, "vectors": len(s.index)} for s in searchers],
        "shard": list(opts.shard) if opts.shard else None,
        "policy": policy.to_json(),
        "options": dataclasses.asdict(opts),
        "versions": versions(),
        "references": references,
    }
    atomic_write_text(out_dir / SUMMARY, json.dumps(summary, indent=2))
    return summary
