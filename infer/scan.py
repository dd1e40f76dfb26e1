"""The scan runner: pulls batches through read → decode → (infer/pipeline.py: regions → embed → search → decide) → write.

``run_scan`` is what ``markguard scan`` calls; ``scan_rows`` is the same pipeline as a generator of
typed rows, for calibration and tests. The stages are modules of their own: read.py, decode.py,
regions/, embed.py, search.py, verify.py, decide.py, writer.py (results.py holds the output contract).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

from markguard.datasets.listings import open_dump
from markguard.device import resolve_device
from markguard.errors import MarkguardError
from markguard.fsio import atomic_write_text
from markguard.infer.backends import resolve_backend
from markguard.infer.decide import Policy, resolve_policy  # noqa: F401  (tests and callers take it from the scan)
from markguard.infer.decide import policy_for as _policy
from markguard.infer.decode import DecodedBatches, RunFailure, batch_loader, worker_death
from markguard.infer.options import STAGES, ScanOptions, StageTimes, resolve_decode  # noqa: F401  (the scan's public names)
from markguard.infer.outdir import holds_output_folder, open_output, pins
from markguard.infer.pipeline import process_batches
from markguard.infer.plan import ScanPlan, build_plan, region_mode
from markguard.infer.read import item_source
from markguard.infer.results import PARQUET, PARTIAL, RESULTS, STATE, SUMMARY, ScanRow, read_results, read_summary
from markguard.infer.searchers import Searcher, load_searchers  # noqa: F401  (the scan's public names)
from markguard.infer.writer import BackgroundWriter, ResultsWriter, require_pyarrow, write_parquet


def scan_rows(source: str | Path, searchers: list[Searcher], policy: Policy, opts: ScanOptions, *, skip: int = 0,
              times: StageTimes | None = None, full_matches: bool = False, plan: ScanPlan | None = None) -> Iterator[ScanRow]:
    """The pipeline as a generator of rows, in input order, after skipping ``skip`` inputs; ``plan``: the scan
    resolved once (built here from ``searchers``, ``policy`` and ``opts`` when not given)."""
    times = times or StageTimes()
    if opts.engine == "ray":
        from markguard.infer.ray_engine import ray_rows

        for s in searchers:
            region_mode(s, opts)  # a bad mode fails here, in the main process, not in an actor
        yield from ray_rows(source, searchers, policy, opts, skip=skip, times=times)
        return
    if opts.engine != "local":
        raise MarkguardError(f"unknown engine {opts.engine!r}; choose local or ray")
    plan = plan or build_plan(searchers, policy, opts)  # a bad mode or look setting fails here, not in the first batch
    # decoded once, at the largest scan size, normalised as the first model wants; model_input() adapts it for each
    ds = DecodedBatches(item_source(source, opts.shard), size=plan.size, mean=plan.mean, std=plan.std, batch_size=opts.batch_size,
                        skip=skip, device_jpeg=resolve_decode(opts.decode, opts.device) == "device", hires=plan.hires)
    for rows in process_batches(_decoded(batch_loader(ds, opts.workers), times), plan, times):
        yield from rows


def _decoded(loader, times: StageTimes) -> Iterator:
    """The loader's batches; a failure in a decoding worker as one line."""
    batches = iter(loader)
    while True:
        try:
            batch = next(batches, None)
        except RuntimeError as e:  # a decoding worker killed by the system: one line, not the loader's traceback
            line = worker_death(e)
            if line is None:
                raise
            raise MarkguardError(line) from None
        if batch is None:
            return
        if isinstance(batch, RunFailure):
            raise MarkguardError(batch.message)
        times.merge({"decode": batch.decode_s})
        yield batch


class Progress:
    """A progress bar on a terminal, a log line every few seconds elsewhere: done, images/s, ETA, flagged."""

    def __init__(self, total: int | None, done: int, stream=None, every_s: float = 10.0, enabled: bool = True, flagged: int = 0):
        self.times: StageTimes | None = None  # the scan's stage times, for each stage's share on the line
        self.total, self.done, self.flagged = total, done, flagged  # a resume starts from the rows already written
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
        shares = self.shares_line()
        if shares:
            self.stream.write(shares + "\n")
        self.stream.write(self.line() + "\n")
        self.stream.flush()

    def line(self) -> str:
        rate = (self.done - self.start_done) / max(1e-9, time.monotonic() - self.t0)
        eta = f", ETA {(self.total - self.done) / rate:.0f}s" if self.total and rate > 0 else ""
        of = f"/{self.total}" if self.total else ""
        return f"scan: {self.done}{of} images, {rate:.1f} img/s{eta}, flagged {self.flagged}"

    def shares_line(self) -> str | None:
        """Where the time goes, each stage's share, largest first (logged just before each progress line)."""
        if self.times is None or sum(self.times.seconds.values()) <= 0:
            return None
        shares = sorted(((v, k) for k, v in self.times.shares().items() if v >= 0.01), reverse=True)
        return "scan: time by stage: " + ", ".join(f"{k} {v:.0%}" for v, k in shares)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._log()  # a log always ends with where the scan stopped


FORMATS = ("jsonl", "parquet")


def _total(source, shard_spec, digest: dict | None = None) -> int | None:
    """How many rows the scan will write (for the ETA), or None when the dump cannot be counted cheaply: compressed tar
    shards would be decompressed whole before the first photo. A folder's count is its digest's (one walk, not two)."""
    from markguard.datasets.listings import _resolve_dump, _uncompressed, count_dump

    try:
        if digest is not None and digest.get("kind") == "dir" and "files" in digest:
            total = int(digest["files"])
        else:
            kind, target = _resolve_dump(source)
            if kind == "tar" and not all(_uncompressed(Path(t)) for t in target):
                return None
            total = count_dump(source)
    except (ImportError, OSError, MarkguardError):
        return None
    if shard_spec:
        i, n = shard_spec
        total = len(range(i, total, n))
    return total


@holds_output_folder
def run_scan(source: str | Path, index_paths: list[str | Path], out_dir: str | Path, *, model: str | Path | None = None,
             opts: ScanOptions | None = None, resume: bool = False, progress: bool = True, formats: tuple[str, ...] = ("jsonl",),
             progress_stream=None, progress_every_s: float = 10.0) -> dict:
    """Scan a dump into ``out_dir``; returns the summary. Resumable; a finished scan is not redone."""
    from markguard.config import versions

    opts = opts or ScanOptions()
    opts = dataclasses.replace(opts, device=resolve_device(opts.device))
    opts = dataclasses.replace(opts, decode=resolve_decode(opts.decode, opts.device))
    # the backend that runs (auto: ONNX Runtime on a CPU where installed): scan.json pins it, summary.json says which
    opts = dataclasses.replace(opts, backend=resolve_backend(opts.backend, opts.device, compile=opts.compile, stream=progress_stream))
    if opts.verify is None:  # the default: verification where OpenCV is installed (scan.json and summary.json say which)
        import importlib.util

        opts = dataclasses.replace(opts, verify=importlib.util.find_spec("cv2") is not None)
        if not opts.verify and progress:
            (progress_stream or sys.stderr).write("scan: no geometric verification (OpenCV is not installed: "
                                                  "pip install 'markguard[verify]'); --no-verify silences this\n")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise MarkguardError(f"unknown output format(s) {unknown}; choose from {', '.join(FORMATS)}")
    if "parquet" in formats:
        require_pyarrow()
    if opts.engine not in ("local", "ray"):
        raise MarkguardError(f"unknown engine {opts.engine!r}; choose local or ray")
    if opts.keep_embeddings and opts.engine != "local":
        raise MarkguardError("--keep-embeddings needs --engine local (the Ray engine does not return the regions)")
    out_dir = Path(out_dir)
    if not index_paths:
        raise MarkguardError("no index given; pass -i INDEX (built with `markguard index build GALLERY -o INDEX`)")
    open_dump(source)  # a dump that cannot be read is named before the models load (seconds)
    searchers = load_searchers(index_paths, model, opts.device, opts.backend, compile=opts.compile)
    card = searchers[0].card
    from markguard.infer.combine import load_for_scan

    combiner, combiner_path = load_for_scan(opts.combiner, searchers, opts)  # once: every batch and Ray actor gets this one
    opts = dataclasses.replace(opts, combiner=None if combiner_path is None else str(combiner_path.resolve()))
    policy = _policy(searchers, opts, combiner)
    state = pins(source, searchers, policy, opts)
    finished = open_output(out_dir, state, resume=resume, formats=formats,
                           items=item_source(source, opts.shard))
    if finished is not None:
        return finished

    writer = ResultsWriter(out_dir, resume=resume or (out_dir / RESULTS).exists())
    skipped = writer.rows
    counts: Counter = Counter()
    from markguard.infer.flood import guard_for

    flood = guard_for(opts, policy)
    if skipped:  # counts of the rows already written, so the summary covers the whole scan
        for row in read_results(writer.path):
            counts[row.status] += 1
            flood.replay(row)
    total = _total(source, opts.shard, state["input_digest"])
    bar = Progress(total, skipped, stream=progress_stream, every_s=progress_every_s, enabled=progress, flagged=counts["flag"])
    times = StageTimes()
    bar.times = times
    t_start = time.perf_counter()
    done = 0
    bg = BackgroundWriter(writer)
    store = None
    if opts.keep_embeddings:
        from markguard.infer.rematch import EmbeddingStore

        store = EmbeddingStore(out_dir, model=card.fingerprint, dim=card.dim, encoding=opts.keep_embeddings, skip=skipped)
    try:
        pending: list[dict] = []
        for row in scan_rows(source, searchers, policy, opts, skip=skipped, times=times):
            row = flood.apply(row)  # in input order: a reference flagging far more than usual is held for review
            pending.append(row.to_json())
            counts[row.status] += 1
            if store is not None:
                store.add(row)
            if len(pending) >= opts.batch_size:
                bg.write(pending)
                bar.update(len(pending), sum(r["status"] == "flag" for r in pending))
                done += len(pending)
                pending = []
        bg.write(pending)
        done += len(pending)
        bar.update(len(pending), sum(r["status"] == "flag" for r in pending))
        t = time.perf_counter()
        if store is not None:
            store.finish()
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
        "stage_share": times.shares(),
        "model": {"fingerprint": card.fingerprint, "backbone": card.backbone, "scan_size": card.scan_size},
        "indexes": [{"path": str(s.path.resolve()), "name": s.name or None, "fingerprint": s.card.fingerprint,
                     "model": str(s.model_dir.resolve()) if s.model_dir else None, "vectors": len(s.index), "bank": s.bank}
                    for s in searchers],
        "shard": list(opts.shard) if opts.shard else None,
        "policy": policy.to_json(),
        "options": dataclasses.asdict(opts),
        "versions": versions(),
        "references": references,
        "flood": flood.to_json(),
    }
    atomic_write_text(out_dir / SUMMARY, json.dumps(summary, indent=2))
    return summary
