"""Decoded batches through the scan plan's stages (infer/plan.py), in order, each timed."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

from markguard.infer.decode import Batch
from markguard.infer.options import StageTimes
from markguard.infer.results import ScanRow
from markguard.infer.stages import BatchWork, IndexWork


def process_batch(batch: Batch, plan, times: StageTimes) -> list[ScanRow]:
    """``batch`` through ``plan.stages``: each index's stages (skipped when no photo of the batch decoded), the
    evidence producers, then decide. Nothing here looks at a model card or an option: the plan did, once."""
    return _run(BatchWork(batch, times, [IndexWork() for _ in plan.searchers]), plan.stages)


def process_batches(batches: Iterable[Batch], plan, times: StageTimes) -> Iterator[list[ScanRow]]:
    """Each batch's rows, in input order. With ``plan.opts.overlap`` the model's stages of the next batch run while
    this batch's evidence and decision stages (verification's keypoints, OCR, the combiner) finish on a second
    thread: the model and OpenCV each leave the cores idle part of the time. The rows are the same either way.
    A failure while reading or embedding a batch surfaces after the rows of the batch before are given."""
    head = plan.model_stages
    if not plan.opts.overlap or head in (0, len(plan.stages)):
        for batch in batches:
            yield process_batch(batch, plan, times)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="markguard-evidence") as pool:
        pending, it = None, iter(batches)
        while True:
            try:
                batch = next(it, None)
                if batch is not None:
                    work = BatchWork(batch, times, [IndexWork() for _ in plan.searchers])
                    _run(work, plan.stages[:head])
            except BaseException:
                if pending is not None:
                    yield pending.result()  # the rows found already are written before the failure surfaces
                raise
            if pending is not None:
                yield pending.result()
            if batch is None:
                return
            pending = pool.submit(_run, work, plan.stages[head:])


def _run(work: BatchWork, stages: list) -> list[ScanRow] | None:
    for stage in stages:
        if stage.per_index and not work.batch.ok:
            continue
        t = time.perf_counter()
        stage(work)
        if stage.name is not None:
            work.times.add(stage.name, t)
    return work.rows
