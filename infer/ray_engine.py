"""The Ray Data engine: the same decode → regions → embed → search → decide, run by model-holding actors on a cluster.

The dump is read lazily by a few read tasks, each streaming one contiguous range of the (sharded,
resumed) input and reading only the part of the dump that holds it (for tar shards, only the shard
files it spans: ``open_dump_range``); ``map_batches`` hands batches to a pool of actors that each load the model and the
indexes once. With ``preserve_order`` Ray Data returns blocks in the order of the read tasks, so rows
arrive in input order and the writer, resume and ``results.jsonl`` contract stay those of the local
engine. Paths in the dump, the indexes and the model must be readable from every node (shared storage).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from markguard.errors import MarkguardError
from markguard.infer.results import ScanRow

ITEM_FIELDS = ("index", "listing_id", "image", "seller_id", "title", "path", "data", "error")
READ_BLOCK_ROWS = 256


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MarkguardError("--engine ray needs Ray Data: pip install 'markguard[ray]'") from None
    return ray


def _item_rows(source: str, shard_spec, start: int, stop: int) -> Iterator[dict]:
    """Positions ``start`` to ``stop - 1`` of the (sharded) dump, reading only the part of it that holds them."""
    from markguard.datasets.listings import open_dump_range

    if shard_spec:  # position p of shard i/n is position i + p*n of the dump
        i, n = shard_spec
        items = (it for it in open_dump_range(source, i + start * n, i + (stop - 1) * n + 1) if (it.index - i) % n == 0)
    else:
        items = open_dump_range(source, start, stop)
    for item in items:
        yield {"index": item.index, "listing_id": item.listing_id, "image": item.image, "seller_id": item.seller_id,
               "title": item.title, "path": None if item.path is None else str(item.path), "data": item.data, "error": item.error}


def _datasource(source: str, shard_spec, skip: int, total: int):
    """A Ray Datasource over the dump: ``parallelism`` read tasks, each a contiguous range of positions."""
    import pyarrow as pa
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    schema = pa.schema([("index", pa.int64()), ("listing_id", pa.string()), ("image", pa.string()), ("seller_id", pa.string()),
                        ("title", pa.string()), ("path", pa.string()), ("data", pa.binary()), ("error", pa.string())])

    def read(start: int, stop: int):
        rows = _item_rows(source, shard_spec, start, stop)
        while chunk := list(itertools.islice(rows, READ_BLOCK_ROWS)):
            yield pa.Table.from_pylist(chunk, schema=schema)

    class ListingDatasource(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
            n = max(0, total - skip)
            parts = max(1, min(parallelism, (n + READ_BLOCK_ROWS - 1) // READ_BLOCK_ROWS))
            bounds = [skip + n * i // parts for i in range(parts + 1)]
            return [ReadTask(lambda a=a, b=b: read(a, b), BlockMetadata(num_rows=b - a, size_bytes=None, input_files=None, exec_stats=None),
                             schema=schema)
                    for a, b in zip(bounds, bounds[1:]) if b > a]

    return ListingDatasource()


class ScanActor:
    """Holds the model(s) and index(es) on one worker; turns a batch of items into rows (as JSON text)."""

    def __init__(self, specs: list[tuple[str, str, str | None]], policy, opts):
        from markguard.infer.searchers import load_searchers

        self.searchers = []
        for name, path, model_dir in specs:  # each index with the model it was opened with on the driver
            s = load_searchers([path], model_dir, opts.device, opts.backend)[0]
            s.name = name
            self.searchers.append(s)
        from markguard.infer.plan import build_plan

        self.plan = build_plan(self.searchers, policy, opts)  # resolved once an actor, as the local engine does once a scan

    def __call__(self, batch: dict) -> dict:
        from markguard.datasets.listings import ListingItem
        from markguard.infer.decode import decode_items
        from markguard.infer.options import StageTimes
        from markguard.infer.pipeline import process_batch

        items = []
        for i in range(len(batch["index"])):
            f = {k: batch[k][i] for k in ITEM_FIELDS}
            path = f["path"]
            items.append(ListingItem(int(f["index"]), f["listing_id"], f["image"], f["seller_id"], f["title"],
                                     None if path is None else Path(path), f["data"], f["error"]))
        times = StageTimes()
        t = time.perf_counter()
        plan = self.plan
        decoded = decode_items(items, size=plan.size, mean=plan.mean, std=plan.std, hires=plan.hires)
        times.add("decode", t)
        rows = process_batch(decoded, plan, times)
        return {"index": np.array([it.index for it in items], dtype=np.int64),
                "row": np.array([json.dumps(r.to_json()) for r in rows], dtype=object),
                # the batch's stage times ride on its first row, so the driver adds each batch once
                "times": np.array([json.dumps(times.seconds)] + ["{}"] * (len(rows) - 1), dtype=object)}


def _rows_or_run_error(ray, ds) -> Iterator[dict]:
    """The dataset's rows; a MarkguardError raised in a task (a bad manifest line) comes back as itself."""
    try:
        yield from ds.iter_rows()
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, MarkguardError):
            raise MarkguardError(str(cause)) from None
        raise


def ray_rows(source, searchers, policy, opts, *, skip: int = 0, times=None) -> Iterator:
    """Rows of the scan computed on Ray, in input order, after skipping ``skip`` inputs."""
    from markguard.datasets.listings import count_dump, open_dump

    ray = _ray()
    open_dump(source)  # fail here on a missing or unreadable dump
    total = count_dump(source)
    if opts.shard:
        total = len(range(opts.shard[0], total, opts.shard[1]))
    if not ray.is_initialized():
        ray.init(address=opts.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # blocks come back in read-task order: rows stay in input order
    ctx.enable_progress_bars = False

    gpu = opts.device.startswith("cuda")
    resources = ray.cluster_resources()
    actors = opts.actors or max(1, int(resources.get("GPU", 0) if gpu else resources.get("CPU", 2) // 2))
    specs = [(s.name, str(s.path), None if s.model_dir is None else str(s.model_dir)) for s in searchers]
    ds = ray.data.read_datasource(_datasource(str(source), opts.shard, skip, total), override_num_blocks=max(1, actors * 2))
    ds = ds.map_batches(ScanActor, fn_constructor_args=(specs, policy, opts), batch_size=opts.batch_size, batch_format="numpy",
                        concurrency=actors, num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0)
    last = -1
    for rec in _rows_or_run_error(ray, ds):
        if rec["index"] <= last:  # preserve_order is the contract this engine stands on; never write rows out of order
            raise MarkguardError(f"ray engine returned item {rec['index']} after {last}; rows out of order")
        last = rec["index"]
        if times is not None:
            times.merge(json.loads(rec["times"]))
        yield ScanRow.from_json(json.loads(rec["row"]))
