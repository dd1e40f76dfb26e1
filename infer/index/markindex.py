"""MarkIndex: genuine-mark vectors searchable by cosine, with stable ids, their records and the application's metadata."""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterator

import faiss
import numpy as np

from markguard.errors import MarkguardError
from markguard.infer.index.backends import _BACKENDS
from markguard.infer.index.kinds import REBUILD, IndexKind, choose_kind, estimate_bytes
from markguard.infer.index.records import (MarkRecord, _memory_db, _record_rows, delete_ids, matching_ids,
                                           records_after, records_by_id)
from markguard.infer.index.store import APP_META, load_index, save_index
from markguard.infer.index.tuning import RECALL_K, TUNE_QUERIES, tune_backend

log = logging.getLogger("markguard.infer.index")

SEARCH_BATCH = 4096  # queries per FAISS call: bounds the distance and re-rank buffers
NORM_TOLERANCE = 1e-2  # bf16 embeddings cast back to float32 land within ~1e-3 of unit norm


class MarkIndex:
    """Genuine-mark vectors searchable by cosine, with stable ids and their brand/mark metadata."""

    def __init__(self, *, fingerprint: str, dim: int, backend, db: sqlite3.Connection, next_id: int,
                 recall: float | None = None, recall_target: float | None = None, path: Path | None = None,
                 meta: dict | None = None):
        self.fingerprint = fingerprint
        self.meta = meta  # saved as markguard.json inside the folder swap; None: the index carries none
        self.save_id = ""  # changes with every save: a scan pins it
        self.dim = dim
        self._backend = backend
        self._db = db
        self._next_id = next_id
        self._recall = recall
        self._recall_target = recall_target
        self._path = path
        self._lock = threading.RLock()

    @property
    def kind(self) -> IndexKind:
        return self._backend.kind

    # ---- building

    @classmethod
    def build(cls, vectors: np.ndarray, records: list[dict], *, fingerprint: str, kind: str | IndexKind = "auto",
              memory_budget_mb: float | None = None, recall_target: float = 0.95, seed: int = 0,
              options: dict | None = None) -> MarkIndex:
        """Index ``vectors`` (L2-normalised, one row per record) and tune the search for ``recall_target``.

        ``options`` override the chosen kind's settings (e.g. ``{"m": 48}`` for hnsw).
        """
        x = _as_vectors(vectors, None, "vectors")
        if len(records) != len(x):
            raise MarkguardError(f"{len(x):,} vectors but {len(records):,} records; give one record a vector")
        if not fingerprint:
            raise MarkguardError("an index needs the fingerprint of the model that embedded its vectors")
        if not 0 < recall_target <= 1:
            raise MarkguardError(f"recall_target must be in (0, 1], got {recall_target}")
        n, dim = x.shape
        chosen = choose_kind(n, dim, memory_budget_mb) if str(kind) == "auto" else IndexKind.named(kind)
        settings = chosen.settings(options)
        log.info("building a %s index of %s vectors x %d dims: ~%.0f MB", chosen.label, f"{n:,}", dim,
                 estimate_bytes(chosen, n, dim, settings) / 2**20)
        ids = np.arange(n, dtype=np.int64)
        db = _memory_db()
        with db:
            db.executemany("INSERT INTO marks VALUES (?,?,?,?,?)", _record_rows(records, ids))
        rng = np.random.default_rng(seed)
        train = x
        if n > getattr(settings, "train_size", n):  # quantisers train on a sample
            train = x[np.sort(rng.choice(n, settings.train_size, replace=False))]
        backend = _BACKENDS[chosen].create(dim, n, settings, train, seed)
        index = cls(fingerprint=fingerprint, dim=dim, backend=backend, db=db, next_id=n)
        # Hold back a sample of the marks, tune with them as queries against the rest, then add them:
        # held-out queries are distributed like the marks without being in the index, as photos are.
        held = np.zeros(n, bool)
        if backend.param_name is not None and n > 5 * RECALL_K:
            held[rng.choice(n, min(TUNE_QUERIES, n // 5), replace=False)] = True
        for part in (~held, held):
            xs, ids_part = x[part], ids[part]
            for s in range(0, len(xs), 262_144):  # chunks bound the transient copies faiss makes while adding
                backend.add(xs[s:s + 262_144], ids_part[s:s + 262_144])
            if part is not held:
                index.tune(recall_target, queries=x[held] if held.any() else None, vectors=(xs, ids_part), seed=seed)
        return index

    def tune(self, recall_target: float = 0.95, *, queries: np.ndarray | None = None,
             vectors: tuple[np.ndarray, np.ndarray] | None = None, n_queries: int = TUNE_QUERIES,
             seed: int = 0) -> float:
        """Pick the smallest efSearch/nprobe reaching ``recall_target`` recall@10 against exact search.

        ``queries`` should be held out: vectors like the indexed ones but not in the index (build
        holds back a sample of the marks for this, then adds them). Without them, a sample of the
        indexed vectors is searched leave-one-out (itself excluded from both top-10s), which flatters
        HNSW a little: a node's graph links are its neighbours. ``vectors`` = (x, ids) of the index
        spares reading them back (exact for flat/hnsw, 8-bit otherwise). Returns the measured recall.
        """
        with self._lock:
            b = self._backend
            self._recall_target = recall_target
            if queries is not None:
                queries = _as_vectors(queries, self.dim, "queries", self._where(), unit=False)
            chunks = (lambda: iter([vectors])) if vectors is not None else b.iter_live
            self._recall = tune_backend(b, recall_target, queries=queries, chunks=chunks, n_queries=n_queries, seed=seed)
            return self._recall

    # ---- mutation

    def add(self, vectors: np.ndarray, records: list[dict]) -> list[int]:
        """Add marks without rebuilding; returns their new ids."""
        x = _as_vectors(vectors, self.dim, "vectors", self._where())
        if len(records) != len(x):
            raise MarkguardError(f"{len(x):,} vectors but {len(records):,} records; give one record a vector")
        with self._lock:
            ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
            rows = _record_rows(records, ids)
            with self._db:  # rolls the metadata back if FAISS refuses the vectors
                self._db.executemany("INSERT INTO marks VALUES (?,?,?,?,?)", rows)
                if len(x):
                    self._backend.add(x, ids)
            self._next_id += len(x)
            return ids.tolist()

    def remove(self, *, brand: str | None = None, mark: str | None = None, ids=None) -> int:
        """Remove the marks matching every filter given; returns how many were removed."""
        if brand is None and mark is None and ids is None:
            raise MarkguardError("remove needs a brand, a mark or ids; refusing to empty the whole index")
        with self._lock:
            found = matching_ids(self._db, brand=brand, mark=mark, ids=ids)
            if not found:
                return 0
            with self._db:  # rolls the records back if FAISS refuses the removal
                delete_ids(self._db, found)
                self._backend.remove(np.array(found, np.int64))
            return len(found)

    # ---- queries

    def use_gpu(self) -> str:
        """Search on every visible GPU with faiss-gpu: exact (flat) indexes only, as HNSW has no GPU
        version and this index's IVF search refines on the host. Returns what was done, in words."""
        n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if n == 0 or not hasattr(faiss, "index_cpu_to_all_gpus"):
            return "CPU search (this faiss has no GPU support: pip install faiss-gpu)"
        if self.kind is not IndexKind.FLAT:
            return f"CPU search ({self.kind.name.lower()} has no faiss GPU search here)"
        with self._lock:
            self._backend.to_gpu()
        return f"GPU search on {n} GPU(s)"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k cosine scores and ids for each query; where fewer than k exist, ids are -1 and scores -inf."""
        # queries are not held to unit norm: one odd region must not fail a scan's whole batch,
        # and a query's norm only scales its scores
        q = _as_vectors(queries, self.dim, "queries", self._where(), unit=False)
        if k < 1:
            raise MarkguardError(f"k must be at least 1, got {k}")
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        with self._lock:
            if self._backend.live == 0:
                return scores, ids
            for s in range(0, len(q), SEARCH_BATCH):
                d, i = self._backend.search(q[s:s + SEARCH_BATCH], k)
                scores[s:s + SEARCH_BATCH], ids[s:s + SEARCH_BATCH] = np.where(i >= 0, d, -np.inf), i
        return scores, ids

    def get(self, ids) -> list[MarkRecord | None]:
        """Records for ``ids`` in the same order; None for -1 and for removed or unknown ids."""
        wanted = [int(i) for i in np.asarray(ids).ravel()]
        uniq = sorted({i for i in wanted if i >= 0})
        with self._lock:
            found = records_by_id(self._db, uniq)
        return [found.get(i) for i in wanted]

    def records(self) -> Iterator[MarkRecord]:
        """All records by id, read in pages so a concurrent add or remove cannot break the iteration."""
        last = -1
        while True:
            with self._lock:
                page = records_after(self._db, last)
            if not page:
                return
            yield from page
            last = page[-1].id

    def __len__(self) -> int:
        return self._backend.live

    def info(self) -> dict:
        b = self._backend
        with self._lock:
            brands = self._db.execute("SELECT COUNT(DISTINCT brand) FROM marks").fetchone()[0]
        return {
            "kind": b.kind.label,
            "factory": b.factory,
            "params": {b.param_name: b.param} if b.param_name else {},
            "ntotal": len(self),
            "dim": self.dim,
            "fingerprint": self.fingerprint,
            "brands": brands,
            "memory_bytes": b.memory_bytes(),
            "recall_at_10": self._recall,
            "recall_target": self._recall_target,
            "next_id": self._next_id,
            "tombstones": len(b.tombstones()),
            "settings": dataclasses.asdict(b.settings),
            "path": str(self._path) if self._path else None,
        }

    def _where(self) -> str:
        return str(self._path) if self._path else "index"
    # ---- files

    def save(self, path: str | os.PathLike) -> None:
        """Write the index folder atomically, ``meta`` included: a killed save leaves the previous index whole."""
        save_index(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect_fingerprint: str | None = None) -> MarkIndex:
        """Read an index folder, verifying checksums, counts and (if given) the model fingerprint.

        Every file comes from one save, even while another process saves the same folder (``index
        add`` during a scan's start): the folder is opened once, and read again if a save replaced it.
        """
        return load_index(cls, path, expect_fingerprint=expect_fingerprint)

    def require_fingerprint(self, fingerprint: str) -> None:
        """Refuse to search with a model other than the one that built this index."""
        if fingerprint != self.fingerprint:
            raise MarkguardError(f"{self._where()}: index was built by model {self.fingerprint} but this model is "
                                 f"{fingerprint}; rebuild with `markguard index build` using this "
                                 f"model, or pass the model that built it")

    def require_meta(self) -> dict:
        """The model and brand settings saved with this index; an index without them is refused, never read as empty."""
        if self.meta is None:
            raise MarkguardError(f"{self._where()}: index has no {APP_META} (the model that built it, the brands' "
                                 f"authorised sellers and thresholds); rebuild it with `markguard index build "
                                 f"GALLERY -o {self._where()}`")
        return self.meta



def _as_vectors(v, dim: int | None, what: str, where: str = "index", *, unit: bool = True) -> np.ndarray:
    x = np.asarray(v)
    if x.ndim == 1 and dim is not None and x.shape[0] == dim:
        x = x[None, :]
    if x.ndim != 2:
        raise MarkguardError(f"{what} must be a 2-d array (n, dim), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise MarkguardError(f"{where}: {what} have {x.shape[1]} dims but the index holds {dim}; embed with the "
                             f"model that built the index, or {REBUILD} for this model")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise MarkguardError(f"{what}: row {int(np.argwhere(~np.isfinite(x))[0, 0])} has NaN or inf values")
    if unit and len(x):
        norms = np.linalg.norm(x, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1) > NORM_TOLERANCE)
        if len(bad):
            raise MarkguardError(f"{what}: row {bad[0]} has L2 norm {norms[bad[0]]:.3f}; the index compares "
                                 f"cosines, so L2-normalise embeddings first")
    return x
