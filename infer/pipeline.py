"""One decoded batch through the scan plan's stages (infer/plan.py), in order, each timed."""

from __future__ import annotations

import time

from markguard.infer.decode import Batch
from markguard.infer.options import StageTimes
from markguard.infer.results import ScanRow
from markguard.infer.stages import BatchWork, IndexWork


def process_batch(batch: Batch, plan, times: StageTimes) -> list[ScanRow]:
    """``batch`` through ``plan.stages``: each index's stages (skipped when no photo of the batch decoded), the
    evidence producers, then decide. Nothing here looks at a model card or an option: the plan did, once."""
    work = BatchWork(batch, times, [IndexWork() for _ in plan.searchers])
    for stage in plan.stages:
        if stage.per_index and not batch.ok:
            continue
        t = time.perf_counter()
        stage(work)
        if stage.name is not None:
            times.add(stage.name, t)
    return work.rows
