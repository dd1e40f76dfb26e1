"""Recall tuning: the smallest efSearch/nprobe whose recall@10 against exact search reaches the target."""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterable, Iterator

import faiss
import numpy as np

log = logging.getLogger("markguard.infer.index")

RECALL_K = 10  # recall@10 is what the tuner and the benchmark measure
TUNE_QUERIES = 500


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k (ids >= 0) that ``found`` returned, any order."""
    return float(_recalls(found, truth).mean())


def _recalls(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    hit = (found[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)
    wanted = np.maximum((truth >= 0).sum(1), 1)
    return hit.any(1).sum(1) / wanted


def _drop_self(ids: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """Each row's first k ids other than its own (leave-one-out)."""
    order = np.argsort(ids == self_ids[:, None], axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, 1)


def exact_search(chunks: Iterable[tuple[np.ndarray, np.ndarray]], queries: np.ndarray, k: int):
    """Brute-force top-k inner products over (vectors, ids) chunks: the reference the tuner compares to."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for x, ids in chunks:
        if len(x):
            d, pos = faiss.knn(queries, x, min(k, len(x)), metric=faiss.METRIC_INNER_PRODUCT)
            pad = k - d.shape[1]
            if pad:
                d = np.pad(d, ((0, 0), (0, pad)), constant_values=-np.inf)
                pos = np.pad(pos, ((0, 0), (0, pad)), constant_values=-1)
            heap.add_result(d, np.where(pos >= 0, ids[np.maximum(pos, 0)], -1))
    heap.finalize()
    return heap.D, heap.I


def tune_backend(b, recall_target: float, *, queries: np.ndarray | None,
                 chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], n_queries: int = TUNE_QUERIES,
                 seed: int = 0) -> float:
    """Set backend ``b``'s search parameter to the smallest value of its sweep that reaches ``recall_target``;
    returns the measured recall. ``chunks()`` yields the indexed (vectors, ids); ``queries`` (held out) or,
    without them, a sample of the indexed vectors searched leave-one-out (see MarkIndex.tune)."""
    from markguard.infer.index.kinds import IndexKind

    if b.param_name is None or b.live <= RECALL_K:
        return 1.0  # exact search, or so few vectors that every search returns all of them
    if queries is not None:
        q = queries
        qids = np.full(len(q), -2, np.int64)  # matches no id: nothing to leave out
    else:
        rng = np.random.default_rng(seed)
        total = sum(len(ids) for _, ids in chunks())
        picks = np.sort(rng.choice(total, min(n_queries, total), replace=False))
        parts, id_parts, start = [], [], 0
        for x, ids in chunks():
            sel = picks[(picks >= start) & (picks < start + len(x))] - start
            parts.append(x[sel])
            id_parts.append(ids[sel])
            start += len(x)
        q = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
        qids = np.concatenate(id_parts)
    truth = _drop_self(exact_search(chunks(), q, RECALL_K + 1)[1], qids, RECALL_K)
    sweep = getattr(b.settings, "ef_search_sweep", None) or b.settings.nprobe_sweep
    if b.kind is IndexKind.IVFPQ:
        nlist = faiss.extract_index_ivf(b.index).nlist
        sweep = [p for p in sweep if p < nlist] + [nlist]
    recall = 0.0
    for value in sweep:
        b.set_param(value)
        per_query = _recalls(_drop_self(b.search(q, RECALL_K + 1)[1], qids, RECALL_K), truth)
        recall = float(per_query.mean())
        # the target must hold for the population, not just this sample: a one-sided 95% bound
        if recall - 1.645 * per_query.std() / math.sqrt(len(per_query)) >= recall_target:
            break
    else:
        log.warning("%s index reaches recall@10 %.3f at %s=%s, below the %.2f target", b.kind.label,
                    recall, b.param_name, b.param, recall_target)
    log.info("%s: %s=%s gives recall@10 %.3f", b.kind.label, b.param_name, b.param, recall)
    return recall
