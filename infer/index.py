"""The brand index: embeddings of genuine marks in FAISS, their metadata in SQLite, saved as one directory.

Layout of a saved index (a directory)::

    index.faiss    the FAISS index; ids inside it are the stable mark ids
    refine.faiss   ivfpq only: 8-bit copies of the vectors, to re-rank PQ candidates with near-exact scores
    marks.sqlite   marks(id, brand, mark, source, added), meta(next_id), tombstones(id) (removed ids still
                   in a graph or fast-scan lists, filtered at search until a save compacts them)
    markguard.json the application's metadata (MarkIndex.meta): the model that built the index, the brands'
                   settings (authorised sellers, thresholds), the galleries; part of the same atomic save
    index.json     save id, fingerprint, dim, kind, settings, search params, count, sha256 of every file above

Vectors are L2-normalised, so inner product is cosine similarity and a score is comparable with the
calibrated thresholds of the model card whichever kind of index holds the vectors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import faiss
import numpy as np

from markguard.errors import MarkguardError
from markguard.fsio import (FolderChanged, FolderSnapshot, file_mode, fsync_path, new_folder_beside, old_of,
                            recover_folder, swap_in_folder)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
REFINE_FILE = "refine.faiss"
MARKS_FILE = "marks.sqlite"
META_FILE = "index.json"
APP_META = "markguard.json"  # what the application keeps with the index: the model that built it, the brands' settings
LOAD_ATTEMPTS = 20  # a load that a concurrent save keeps replacing tries again this many times
REBUILD = "rebuild it with `markguard index build`"

AUTO_FLAT_BELOW = 50_000  # exact search stays fast (< 1 ms a query on 2 cores) up to about here
RECALL_K = 10  # recall@10 is what the tuner and the benchmark measure
SEARCH_BATCH = 4096  # queries per FAISS call: bounds the distance and re-rank buffers
TUNE_QUERIES = 500
NORM_TOLERANCE = 1e-2  # bf16 embeddings cast back to float32 land within ~1e-3 of unit norm
IDMAP2_REVERSE_BYTES = 40  # IndexIDMap2's unordered_map<id, slot>: node + bucket per entry


# --------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class FlatSettings:
    """Exact inner-product search; memory dim*4 bytes a vector, time linear in the count."""


@dataclass(frozen=True)
class HNSWSettings:
    """Graph search: fast and accurate; memory ~1.3x the raw vectors (Flat) or ~0.55x (SQ8)."""

    m: int = 32  # neighbours a node; 2*m on the base layer
    ef_construction: int = 40  # faiss's default; the tuned efSearch makes up for a sparser graph
    # "Flat" keeps float32 vectors; "SQ8" keeps 8-bit ones (a quarter of the memory, cosines within ~1e-3)
    storage: str = "Flat"
    train_size: int = 65_536  # SQ8: vectors sampled to fit its per-dimension ranges
    ef_search_sweep: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
    compact_above: float = 0.2  # HNSW cannot delete: rebuild on save once this share is tombstones


@dataclass(frozen=True)
class IVFPQSettings:
    """OPQ rotation + inverted lists + product quantisation: the kind that fits large indexes in little memory."""

    opq: bool = True
    dims_per_code: int = 4  # PQ sub-vector width: dim/4 sub-quantisers
    # 4-bit codes scanned with SIMD (faiss "fast scan"): ~2.5x the queries/s of 8-bit PQ at the same
    # nprobe, and with SQ8 re-ranking the same recall (measured at 100k; recall is set by nprobe)
    fast_scan: bool = True
    nbits: int = 8  # without fast_scan
    nlist: int | None = None  # None: about 4*sqrt(n), a power of two
    # "SQ8" keeps an 8-bit copy of each vector (dim bytes) to re-rank k*k_factor PQ candidates, so
    # scores are near-exact cosines (PQ scores are off by ~0.05, too much for calibrated thresholds)
    # and recall@10 is not capped by the PQ code. None saves the memory and returns PQ scores.
    refine: str | None = "SQ8"
    k_factor: int = 10  # candidates re-ranked: max(k, 10) * k_factor
    # Training budget. faiss k-means on 4-dim PQ sub-spaces is slow (tiny GEMMs), and OPQ repeats
    # PQ training every iteration; these bounds keep a 1M build to minutes on 2 cores, and the SQ8
    # re-ranking makes up for the slightly coarser codebooks.
    train_size: int = 131_072  # vectors sampled to train the coarse quantiser (>= 32 a list at 4096 lists)
    kmeans_iters: int = 10
    pq_train_points: int = 16_384
    opq_iters: int = 4  # no recall gain measured from more on our benchmark; real embeddings are more anisotropic
    nprobe_sweep: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)


class IndexKind(Enum):
    """Index types by name (as a recipe or the CLI spells them); each value carries its default settings."""

    FLAT = FlatSettings()
    HNSW = HNSWSettings()
    HNSW_SQ8 = HNSWSettings(storage="SQ8")
    IVFPQ = IVFPQSettings()

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def named(cls, name: str | IndexKind) -> IndexKind:
        if isinstance(name, IndexKind):
            return name
        try:
            return cls[str(name).upper()]
        except KeyError:
            raise MarkguardError(f"unknown index kind {name!r}; choose one of auto, {', '.join(cls.labels())}") from None

    @classmethod
    def labels(cls) -> list[str]:
        return [k.label for k in cls]

    def settings(self, options: dict | None = None):
        """This kind's settings with ``options`` (from YAML or the CLI) applied over the defaults."""
        if not options:
            return self.value
        known = {f.name for f in dataclasses.fields(self.value)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise MarkguardError(f"unknown {self.label} index option(s) {unknown}; valid: {sorted(known) or 'none'}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        return dataclasses.replace(self.value, **fixed)


def _settings_from_json(kind: IndexKind, doc: dict):
    return kind.settings({k: v for k, v in doc.items() if k in {f.name for f in dataclasses.fields(kind.value)}})


def _pq_m(dim: int, dims_per_code: int) -> int:
    """Largest sub-quantiser count dividing dim with sub-vectors at least dims_per_code wide (even: fast scan packs pairs)."""
    cap = max(2, dim // dims_per_code)
    return max([m for m in range(2, cap + 1, 2) if dim % m == 0] or [1])


IVFPQ_MIN_VECTORS = 1_000


def _nlist(n: int, settings: IVFPQSettings) -> int:
    if settings.nlist:
        return settings.nlist
    target = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return max(1, min(target, n // 39))  # faiss k-means wants >= 39 training points a centroid


def _nbits(n: int, settings: IVFPQSettings) -> int:
    # PQ k-means needs >= 39 points a centroid too; small test indexes get smaller codebooks
    return max(4, min(settings.nbits, int(math.log2(max(2, n) / 39))))


def estimate_bytes(kind: IndexKind | str, n: int, dim: int, settings=None) -> int:
    """Memory an index of ``n`` vectors will take, to choose a kind and to log before building."""
    kind = IndexKind.named(kind)
    settings = settings or kind.value
    if kind is IndexKind.FLAT:
        return n * (dim * 4 + 8 + IDMAP2_REVERSE_BYTES)
    if isinstance(settings, HNSWSettings):
        links = (2 * settings.m + 1) * 4  # 2m links on the base layer; the upper layers add ~1 a node
        vector = dim if settings.storage == "SQ8" else dim * 4
        return n * (vector + links + 12 + 8 + IDMAP2_REVERSE_BYTES)
    m = _pq_m(dim, settings.dims_per_code)
    nlist = _nlist(max(n, 1), settings)
    code = m // 2 if settings.fast_scan else m * settings.nbits // 8
    per_vector = code + 8 + (dim + 8 + 8 if settings.refine else 0)  # PQ code + id, SQ8 copy + id + slot map
    return n * per_vector + nlist * dim * 4 + dim * dim * 4 + 256 * dim * 4


def choose_kind(n: int, dim: int, memory_budget_mb: float | None = None, *,
                flat_below: int = AUTO_FLAT_BELOW) -> IndexKind:
    """Like autofaiss: exact while small, HNSW when its vectors fit the budget (float32, else 8-bit), else IVF-PQ."""
    budget = None if memory_budget_mb is None else memory_budget_mb * 2**20
    fits = lambda kind: budget is None or estimate_bytes(kind, n, dim) <= budget  # noqa: E731
    if n < IVFPQ_MIN_VECTORS or (n < flat_below and fits(IndexKind.FLAT)):
        return IndexKind.FLAT  # too few vectors to train a quantiser: flat, whatever the budget
    if fits(IndexKind.HNSW):
        return IndexKind.HNSW
    if fits(IndexKind.HNSW_SQ8):
        return IndexKind.HNSW_SQ8
    if fits(IndexKind.IVFPQ):
        return IndexKind.IVFPQ
    need = estimate_bytes(IndexKind.IVFPQ, n, dim) / 2**20
    bare = estimate_bytes(IndexKind.IVFPQ, n, dim, dataclasses.replace(IndexKind.IVFPQ.value, refine=None)) / 2**20
    raise MarkguardError(f"{n:,} vectors of {dim} dims need ~{need:,.0f} MB even as ivfpq, over the "
                         f"{memory_budget_mb:,.0f} MB budget; raise --memory-budget-mb, or build kind ivfpq "
                         f"with option refine: null (~{bare:,.0f} MB, approximate PQ scores)")


# --------------------------------------------------------------------------- records


@dataclass
class MarkRecord:
    """Metadata of one indexed vector."""

    id: int  # stable: never reused after removal, kept across save/load
    brand: str
    mark: str
    source: str  # gallery file the vector came from, may be ""
    added: str  # ISO date-time, UTC


_SCHEMA = """
CREATE TABLE IF NOT EXISTS marks(id INTEGER PRIMARY KEY, brand TEXT NOT NULL, mark TEXT NOT NULL,
                                 source TEXT NOT NULL DEFAULT '', added TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS marks_brand_mark ON marks(brand, mark);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tombstones(id INTEGER PRIMARY KEY);
"""
_SQL_CHUNK = 900  # stay under SQLite's bound-parameter limit on old builds


def _memory_db() -> sqlite3.Connection:
    # check_same_thread=False: the scan may search from a worker thread; MarkIndex serialises access
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.executescript(_SCHEMA)
    return db


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _record_rows(records: list[dict], ids: np.ndarray) -> list[tuple]:
    rows = []
    stamp = _now()
    for i, (rid, rec) in enumerate(zip(ids.tolist(), records)):
        if not isinstance(rec, dict):
            raise MarkguardError(f"record {i} is a {type(rec).__name__}, expected a dict with brand, mark, source")
        brand, mark = rec.get("brand"), rec.get("mark")
        if not isinstance(brand, str) or not brand or not isinstance(mark, str) or not mark:
            raise MarkguardError(f"record {i} needs non-empty 'brand' and 'mark' strings, got {rec!r}")
        rows.append((rid, brand, mark, str(rec.get("source") or ""), str(rec.get("added") or stamp)))
    return rows


# --------------------------------------------------------------------------- backends


def _sq8(dim: int) -> faiss.IndexScalarQuantizer:
    sq = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    _widen(sq.sq)
    return sq


def _widen(sq: faiss.ScalarQuantizer) -> None:
    # widen the trained per-dimension range by 10% each side: marks added later may fall outside the
    # training sample's range and would otherwise be clipped
    sq.rangestat = faiss.ScalarQuantizer.RS_minmax
    sq.rangestat_arg = 0.1


def _codes_view(flat_codes) -> np.ndarray:
    # a view of an IndexFlatCodes' codes (no copy); valid until the index is next mutated
    return faiss.rev_swig_ptr(flat_codes.codes.data(), flat_codes.ntotal * flat_codes.code_size).reshape(
        flat_codes.ntotal, flat_codes.code_size)
# One class a kind, each owning its FAISS objects; MarkIndex holds ids, metadata, tuning and files.


def _xb_view(flat: faiss.IndexFlat) -> np.ndarray:
    # a view, not a copy: the vectors of a 1M index are a GB; valid until the index is next mutated
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)


def _ids_of(idmap) -> np.ndarray:
    return faiss.vector_to_array(idmap.id_map).astype(np.int64, copy=False)


class _Flat:
    param_name = None
    kind = IndexKind.FLAT

    def __init__(self, index, settings=FlatSettings()):
        self.index, self.settings = index, settings
        self.param = None
        self.gpu = None  # a faiss-gpu copy for searching, when one was asked for and faiss has GPUs

    def to_gpu(self) -> bool:
        self.gpu = faiss.index_cpu_to_all_gpus(self.index)
        return True

    @classmethod
    def create(cls, dim, n, settings, train, seed):
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), settings)

    @property
    def factory(self) -> str:
        return "IDMap2,Flat"

    def add(self, x, ids):
        self.index.add_with_ids(x, ids)
        if self.gpu is not None:
            self.to_gpu()

    def remove(self, ids):
        self.index.remove_ids(ids)
        if self.gpu is not None:
            self.to_gpu()

    def search(self, q, k):
        return (self.gpu or self.index).search(q, k)

    def set_param(self, value):
        pass

    @property
    def live(self) -> int:
        return self.index.ntotal

    def tombstones(self) -> np.ndarray:
        return np.empty(0, np.int64)

    def iter_live(self, chunk=65_536):
        flat = faiss.downcast_index(self.index.index)
        xb, ids = _xb_view(flat), _ids_of(self.index)
        for s in range(0, len(ids), chunk):
            yield np.array(xb[s:s + chunk]), ids[s:s + chunk]

    def memory_bytes(self) -> int:
        return self.index.ntotal * (self.index.d * 4 + 8 + IDMAP2_REVERSE_BYTES)

    def should_compact(self) -> bool:
        return False

    def write(self, folder: Path) -> list[str]:
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        return [INDEX_FILE]

    @classmethod
    def read(cls, read, settings, tombstones):
        return cls(read(INDEX_FILE), settings)


class _Tombstones:
    """Removal by filtering, for indexes that cannot delete (HNSW) or cannot add after deleting (IVF fast scan).

    Removed ids are skipped inside the search (an IDSelector), so a search still returns k live
    results rather than k minus the dead ones; a save rebuilds the index once they pass compact_above.
    """

    compact_above = 0.2

    def _init_dead(self, tombstones):
        self._dead = set(int(i) for i in tombstones)
        self._sel = None  # (IDSelectorBatch, IDSelectorNot), rebuilt after removals

    def _bury(self, ids):
        self._dead.update(int(i) for i in ids)
        self._sel = None

    def _selector(self):
        if not self._dead:
            return None
        if self._sel is None:
            batch = faiss.IDSelectorBatch(np.fromiter(self._dead, np.int64, len(self._dead)))
            self._sel = (batch, faiss.IDSelectorNot(batch))  # keep batch alive: Not holds a raw pointer
        return self._sel[1]

    def tombstones(self) -> np.ndarray:
        return np.array(sorted(self._dead), np.int64)

    @property
    def live(self) -> int:
        return self.index.ntotal - len(self._dead)

    def should_compact(self) -> bool:
        return len(self._dead) > self.compact_above * max(1, self.index.ntotal)


class _HNSW(_Tombstones, _Flat):
    param_name = "efSearch"

    @property
    def kind(self) -> IndexKind:
        return IndexKind.HNSW_SQ8 if self.settings.storage == "SQ8" else IndexKind.HNSW

    def __init__(self, index, settings: HNSWSettings, tombstones=()):
        super().__init__(index, settings)
        self.param = 64
        self.compact_above = settings.compact_above
        self._init_dead(tombstones)

    @classmethod
    def create(cls, dim, n, settings: HNSWSettings, train, seed, trained_like=None):
        if settings.storage == "Flat":
            hnsw = faiss.IndexHNSWFlat(dim, settings.m, faiss.METRIC_INNER_PRODUCT)
        elif settings.storage == "SQ8":
            hnsw = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, settings.m, faiss.METRIC_INNER_PRODUCT)
            storage = faiss.downcast_index(hnsw.storage)
            if trained_like is not None:  # compaction: the same quantiser, so codes carry over exactly
                faiss.copy_array_to_vector(faiss.vector_to_array(trained_like.sq.trained), storage.sq.trained)
                storage.is_trained = hnsw.is_trained = True
            else:
                if len(train) == 0:
                    raise MarkguardError("hnsw_sq8 needs vectors to fit its quantiser; build kind flat for an empty index")
                _widen(storage.sq)
                hnsw.train(train)
        else:
            raise MarkguardError(f"unknown hnsw storage {settings.storage!r}; choose Flat or SQ8")
        hnsw.hnsw.efConstruction = settings.ef_construction
        return cls(faiss.IndexIDMap2(hnsw), settings)

    @property
    def factory(self) -> str:
        return f"IDMap2,HNSW{self.settings.m},{self.settings.storage}"

    def _storage(self):
        return faiss.downcast_index(faiss.downcast_index(self.index.index).storage)

    def remove(self, ids):
        self._bury(ids)  # HNSW cannot unlink a node

    def set_param(self, value):
        self.param = int(value)

    def search(self, q, k):
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self.param, k)
        sel = self._selector()
        if sel is not None:
            params.sel = sel
        return self.index.search(q, k, params=params)

    def iter_live(self, chunk=65_536):
        storage = self._storage()
        codes, ids = _codes_view(storage), _ids_of(self.index)
        dead = self.tombstones()
        for s in range(0, len(ids), chunk):
            keep = ~np.isin(ids[s:s + chunk], dead)
            yield storage.sa_decode(np.ascontiguousarray(codes[s:s + chunk][keep])), ids[s:s + chunk][keep]

    def memory_bytes(self) -> int:
        g = faiss.downcast_index(self.index.index).hnsw
        graph = g.neighbors.size() * 4 + g.offsets.size() * 8 + g.levels.size() * 4
        return graph + self.index.ntotal * (self._storage().code_size + 8 + IDMAP2_REVERSE_BYTES)

    def compact(self):
        """Rebuild the graph from the live vectors, dropping the tombstones (minutes at 1M vectors)."""
        storage = self._storage()
        fresh = _HNSW.create(self.index.d, self.live, self.settings, None, 0,
                             trained_like=storage if self.settings.storage == "SQ8" else None)
        for x, ids in self.iter_live():
            fresh.add(x, ids)
        self.index, self._dead, self._sel = fresh.index, set(), None

    @classmethod
    def read(cls, read, settings, tombstones):
        return cls(read(INDEX_FILE), settings, tombstones)


class _IVFPQ(_Tombstones, _Flat):
    param_name = "nprobe"
    kind = IndexKind.IVFPQ

    def __init__(self, index, refine, settings: IVFPQSettings, tombstones=()):
        super().__init__(index, settings)
        self.refine = refine  # IndexIDMap(IndexScalarQuantizer) or None
        self.param = faiss.extract_index_ivf(index).nprobe
        self._slots = None  # (slot_of_id, codes view), rebuilt lazily after a mutation
        self._init_dead(tombstones)

    @classmethod
    def create(cls, dim, n, settings: IVFPQSettings, train, seed):
        if n < IVFPQ_MIN_VECTORS:
            raise MarkguardError(f"ivfpq needs at least {IVFPQ_MIN_VECTORS:,} vectors to train its quantisers, "
                                 f"got {n:,}; use kind flat (exact) for an index this small")
        m, nlist = _pq_m(dim, settings.dims_per_code), _nlist(n, settings)
        nbits = 4 if settings.fast_scan else _nbits(n, settings)
        factory = (f"OPQ{m}," if settings.opq else "") + f"IVF{nlist},PQ{m}x{nbits}" + ("fs" if settings.fast_scan else "")
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed
        ivf.cp.niter = settings.kmeans_iters
        # the factory turns on polysemous training (code reordering for Hamming pre-filtering); we never
        # filter by Hamming distance, and its annealing dominates the training time
        ivf = faiss.downcast_index(ivf)
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False
        pq = ivf.pq
        pq.cp.seed = seed
        pq.cp.niter = settings.kmeans_iters
        pq.cp.max_points_per_centroid = max(39, settings.pq_train_points // 2**nbits)
        opq_pq = None
        if settings.opq:
            opq = faiss.downcast_VectorTransform(index.chain.at(0))
            opq.niter, opq.niter_pq_0 = settings.opq_iters, settings.opq_iters
            opq.max_train_points = settings.pq_train_points
            # OPQ trains its own 8-bit PQ unless given one: give it the codebook size the index uses
            opq_pq = faiss.ProductQuantizer(dim, m, nbits)
            opq_pq.cp.max_points_per_centroid = pq.cp.max_points_per_centroid
            opq.pq = opq_pq
        index.train(train)
        if opq_pq is not None:
            opq.pq = None  # a raw pointer to our Python-owned PQ: don't leave it dangling
        refine = None
        if settings.refine:
            qtype = {"SQ8": faiss.ScalarQuantizer.QT_8bit, "SQfp16": faiss.ScalarQuantizer.QT_fp16}.get(settings.refine)
            if qtype is None:
                raise MarkguardError(f"unknown ivfpq refine {settings.refine!r}; choose SQ8, SQfp16 or null")
            sq = faiss.IndexScalarQuantizer(dim, qtype, faiss.METRIC_INNER_PRODUCT)
            _widen(sq.sq)
            sq.train(train)
            refine = faiss.IndexIDMap(sq)
        return cls(index, refine, settings)

    @property
    def factory(self) -> str:
        ivf = faiss.extract_index_ivf(self.index)
        pq = faiss.downcast_index(ivf).pq
        s = (f"OPQ{pq.M}," if self.settings.opq else "") + f"IVF{ivf.nlist},PQ{pq.M}x{pq.nbits}"
        s += "fs" if self.settings.fast_scan else ""
        return s + (f",Refine({self.settings.refine})" if self.refine is not None else "")

    def add(self, x, ids):
        self.index.add_with_ids(x, ids)
        if self.refine is not None:
            self.refine.add_with_ids(x, ids)
        self._slots = None

    def remove(self, ids):
        if self.settings.fast_scan:
            # faiss 1.15: adding to an IVF fast-scan index after remove_ids corrupts its packed lists
            # (the new vectors come back under wrong ids), so fast-scan removals are tombstones
            self._bury(ids)
            return
        self.index.remove_ids(ids)
        if self.refine is not None:
            self.refine.remove_ids(ids)
        self._slots = None

    def should_compact(self) -> bool:
        return self.refine is not None and super().should_compact()

    def compact(self):
        """Re-add the live vectors (from the 8-bit store) to an emptied copy of the trained index."""
        chunks = list(self.iter_live())
        index = faiss.clone_index(self.index)
        index.reset()
        refine = faiss.clone_index(self.refine)
        refine.reset()
        self.index, self.refine, self._slots = index, refine, None
        self._init_dead(())
        for x, ids in chunks:
            self.add(x, ids)

    def set_param(self, value):
        self.param = int(value)

    def _search_ivf(self, q, k):
        params = faiss.SearchParametersIVF()
        params.nprobe = self.param
        sel = self._selector()
        if sel is not None:
            params.sel = sel
        if self.settings.opq:  # IndexPreTransform takes the IVF's parameters wrapped
            outer = faiss.SearchParametersPreTransform()
            outer.index_params = params
            return self.index.search(q, k, params=outer)
        return self.index.search(q, k, params=params)

    def _refine_arrays(self):
        if self._slots is None:
            sq = faiss.downcast_index(self.refine.index)
            ids = _ids_of(self.refine)
            slot_of = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, np.int64)
            slot_of[ids] = np.arange(len(ids))
            self._slots = (slot_of, _codes_view(sq), sq)
        return self._slots

    def search(self, q, k):
        if self.refine is None:
            return self._search_ivf(q, k)
        # never fewer candidates than the tuner measured recall@10 with: a k=1 search is as good
        kk = max(k, RECALL_K) * self.settings.k_factor
        _, cand = self._search_ivf(q, kk)
        slot_of, codes, sq = self._refine_arrays()
        ok = cand >= 0
        slots = slot_of[np.where(ok, cand, 0)]
        vecs = sq.sa_decode(codes[slots.ravel()]).reshape(len(q), kk, -1)
        scores = np.matmul(vecs, q[:, :, None])[:, :, 0]
        scores[~ok] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, top, 1), np.where(np.take_along_axis(ok, top, 1),
                                                           np.take_along_axis(cand, top, 1), -1)

    def iter_live(self, chunk=65_536):
        if self.refine is None:
            raise MarkguardError("an ivfpq index without refine keeps no vectors to re-tune on; "
                                 "pass the vectors, or rebuild with `markguard index build`")
        _, codes, sq = self._refine_arrays()
        ids = _ids_of(self.refine)
        dead = self.tombstones()
        for s in range(0, len(ids), chunk):
            keep = ~np.isin(ids[s:s + chunk], dead)
            yield sq.sa_decode(np.ascontiguousarray(codes[s:s + chunk][keep])), ids[s:s + chunk][keep]

    def memory_bytes(self) -> int:
        ivf = faiss.extract_index_ivf(self.index)
        pq = faiss.downcast_index(ivf).pq
        code = pq.M * pq.nbits / 8  # fast scan packs 4-bit codes in blocks; IndexIVF.code_size says otherwise
        total = int(ivf.ntotal * (code + 8)) + ivf.nlist * ivf.d * 4 + pq.M * pq.ksub * pq.dsub * 4
        total += ivf.d * ivf.d * 4 if self.settings.opq else 0
        if self.refine is not None:
            sq = faiss.downcast_index(self.refine.index)
            total += self.refine.ntotal * (sq.code_size + 8 + 8)  # codes + id_map + our slot map
        return total

    def write(self, folder):
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        if self.refine is None:
            return [INDEX_FILE]
        faiss.write_index(self.refine, str(folder / REFINE_FILE))
        return [INDEX_FILE, REFINE_FILE]

    @classmethod
    def read(cls, read, settings, tombstones):
        refine = read(REFINE_FILE) if settings.refine else None
        return cls(read(INDEX_FILE), refine, settings, tombstones)


_BACKENDS = {IndexKind.FLAT: _Flat, IndexKind.HNSW: _HNSW, IndexKind.HNSW_SQ8: _HNSW, IndexKind.IVFPQ: _IVFPQ}


# --------------------------------------------------------------------------- the index


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
            if b.param_name is None or b.live <= RECALL_K:
                self._recall = 1.0  # exact search, or so few vectors that every search returns all of them
                return self._recall
            chunks = (lambda: iter([vectors])) if vectors is not None else b.iter_live
            if queries is not None:
                q = _as_vectors(queries, self.dim, "queries", self._where(), unit=False)
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
            self._recall = recall
            log.info("%s: %s=%s gives recall@10 %.3f", b.kind.label, b.param_name, b.param, recall)
            return recall

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
        where, args = [], []
        if brand is not None:
            where.append("brand = ?")
            args.append(brand)
        if mark is not None:
            where.append("mark = ?")
            args.append(mark)
        with self._lock:
            found = []
            if ids is None:
                found = [r[0] for r in self._db.execute(f"SELECT id FROM marks WHERE {' AND '.join(where)}", args)]
            else:
                seq = ids if isinstance(ids, (np.ndarray, list, tuple)) else list(np.atleast_1d(ids)) if np.isscalar(ids) else list(ids)
                wanted = [int(i) for i in np.asarray(seq, dtype=np.int64).ravel()]
                for s in range(0, len(wanted), _SQL_CHUNK):
                    part = wanted[s:s + _SQL_CHUNK]
                    sql = " AND ".join([f"id IN ({','.join('?' * len(part))})"] + where)
                    found += [r[0] for r in self._db.execute(f"SELECT id FROM marks WHERE {sql}", part + args)]
            if not found:
                return 0
            with self._db:
                for s in range(0, len(found), _SQL_CHUNK):
                    part = found[s:s + _SQL_CHUNK]
                    self._db.execute(f"DELETE FROM marks WHERE id IN ({','.join('?' * len(part))})", part)
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
        found: dict[int, MarkRecord] = {}
        uniq = sorted({i for i in wanted if i >= 0})
        with self._lock:
            for s in range(0, len(uniq), _SQL_CHUNK):
                part = uniq[s:s + _SQL_CHUNK]
                for row in self._db.execute(f"SELECT id, brand, mark, source, added FROM marks WHERE id IN "
                                            f"({','.join('?' * len(part))})", part):
                    found[row[0]] = MarkRecord(*row)
        return [found.get(i) for i in wanted]

    def records(self) -> Iterator[MarkRecord]:
        """All records by id, read in pages so a concurrent add or remove cannot break the iteration."""
        last = -1
        while True:
            with self._lock:
                rows = self._db.execute("SELECT id, brand, mark, source, added FROM marks WHERE id > ? "
                                        "ORDER BY id LIMIT 1000", (last,)).fetchall()
            if not rows:
                return
            yield from (MarkRecord(*r) for r in rows)
            last = rows[-1][0]

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
        path = Path(path)
        if path.exists() and not (path.is_dir() and ((path / META_FILE).exists() or not any(path.iterdir()))):
            raise MarkguardError(f"{path}: exists and is not a markguard index; choose another path")
        with self._lock:
            if self._backend.should_compact():
                log.info("compacting %s: %d tombstones", path, len(self._backend.tombstones()))
                self._backend.compact()
            tmp = new_folder_beside(path)
            try:
                files = self._backend.write(tmp)
                self._write_db(tmp / MARKS_FILE)
                files.append(MARKS_FILE)
                if self.meta is not None:
                    _write_text(tmp / APP_META, json.dumps(self.meta, indent=2) + "\n")
                    files.append(APP_META)
                save_id = uuid.uuid4().hex
                header = {
                    "format": FORMAT_VERSION,
                    "save_id": save_id,
                    "fingerprint": self.fingerprint,
                    "dim": self.dim,
                    "kind": self.kind.label,
                    "factory": self._backend.factory,
                    "settings": dataclasses.asdict(self._backend.settings),
                    "params": {self._backend.param_name: self._backend.param} if self._backend.param_name else {},
                    "count": len(self),
                    "next_id": self._next_id,
                    "recall_at_10": self._recall,
                    "recall_target": self._recall_target,
                    "saved": _now(),
                    "sha256": {name: _sha256(tmp / name) for name in files},
                }
                _write_text(tmp / META_FILE, json.dumps(header, indent=2) + "\n")
                for name in files:
                    os.chmod(tmp / name, file_mode())
                    fsync_path(tmp / name)
                fsync_path(tmp)
                swap_in_folder(tmp, path)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            self._path, self.save_id = path, save_id

    def _write_db(self, file: Path) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('next_id', ?)", (str(self._next_id),))
            self._db.execute("DELETE FROM tombstones")
            self._db.executemany("INSERT INTO tombstones VALUES (?)", [(int(i),) for i in self._backend.tombstones()])
        out = sqlite3.connect(file)
        try:
            self._db.backup(out)
        finally:
            out.close()

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect_fingerprint: str | None = None) -> MarkIndex:
        """Read an index folder, verifying checksums, counts and (if given) the model fingerprint.

        Every file comes from one save, even while another process saves the same folder (``index
        add`` during a scan's start): the folder is opened once, and read again if a save replaced it.
        """
        path = Path(path)
        for attempt in range(LOAD_ATTEMPTS):
            where = recover_folder(path, META_FILE)
            if not where.is_dir():
                if attempt + 1 < LOAD_ATTEMPTS and old_of(path).exists():  # between a save's two renames
                    time.sleep(0.01)
                    continue
                raise MarkguardError(f"{path}: no index here; build one with `markguard index build`")
            try:
                with FolderSnapshot(where) as snap:
                    index = cls._read(snap, where)
            except FolderChanged:
                time.sleep(0.002 * attempt)
                continue
            except FileNotFoundError:
                if attempt + 1 < LOAD_ATTEMPTS:  # the folder itself went between its check and its opening
                    continue
                raise MarkguardError(f"{path}: no index here; build one with `markguard index build`") from None
            if expect_fingerprint is not None:
                index.require_fingerprint(expect_fingerprint)
            return index
        raise MarkguardError(f"{path}: replaced by another save {LOAD_ATTEMPTS} times while loading; "
                             f"wait for the `markguard index add/remove` running on it to finish")

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

    @classmethod
    def _read(cls, snap: FolderSnapshot, path: Path) -> MarkIndex:
        meta_file = path / META_FILE
        try:
            with snap.open(META_FILE) as f:
                header = json.loads(f.read().decode("utf-8"))
            kind = IndexKind.named(header["kind"])
            fingerprint, dim, count = str(header["fingerprint"]), int(header["dim"]), int(header["count"])
            sums = dict(header["sha256"])
        except FileNotFoundError:
            raise MarkguardError(f"{meta_file}: missing, so {path} is not a complete index; {REBUILD}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise MarkguardError(f"{meta_file}: unreadable index metadata ({e}); {REBUILD}") from None
        if header.get("format") != FORMAT_VERSION:
            raise MarkguardError(f"{meta_file}: index format {header.get('format')} is not {FORMAT_VERSION}; {REBUILD}")
        for name in (INDEX_FILE, MARKS_FILE):
            sums.setdefault(name, None)  # a metadata file listing neither is itself damaged
        files: dict[str, BinaryIO] = {}
        try:
            for name, want in sums.items():
                if not isinstance(name, str) or "/" in name or name.startswith("."):
                    raise MarkguardError(f"{meta_file}: lists {name!r}, not a file of an index; {REBUILD}")
                try:
                    files[name] = snap.open(name)
                except (FileNotFoundError, IsADirectoryError):
                    raise MarkguardError(f"{path / name}: missing from the index; restore it or {REBUILD}") from None
                if want is None or _sha256_of(files[name]) != want:
                    raise MarkguardError(f"{path / name}: checksum mismatch (corrupted or truncated); restore it or {REBUILD}")
            app_meta = None
            if APP_META in files:
                app_meta = _json_of(files[APP_META], path / APP_META)
            elif APP_META not in sums:  # an index saved before the metadata moved inside the save
                try:
                    with snap.open(APP_META) as f:
                        app_meta = _json_of(f, path / APP_META)
                except FileNotFoundError:
                    pass
            db = _memory_db()
            try:
                # copied into memory: later add/remove must not touch the saved file, which a save replaces whole
                files[MARKS_FILE].seek(0)
                data = files[MARKS_FILE].read()
                if not data:
                    raise sqlite3.DatabaseError("empty file")
                db.deserialize(data)
                db.executescript(_SCHEMA)
                n_marks = db.execute("SELECT COUNT(*) FROM marks").fetchone()[0]
                max_id = db.execute("SELECT COALESCE(MAX(id), -1) FROM marks").fetchone()[0]
                tomb = np.array([r[0] for r in db.execute("SELECT id FROM tombstones")], np.int64)
                row = db.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()
            except (sqlite3.DatabaseError, MemoryError) as e:  # MemoryError: sqlite's answer to some garbage
                raise MarkguardError(f"{path / MARKS_FILE}: unreadable metadata ({e}); {REBUILD}") from None
            settings = _settings_from_json(kind, header.get("settings") or {})

            def read_faiss(name: str):
                if name not in files:
                    raise MarkguardError(f"{path / name}: missing from the index; restore it or {REBUILD}")
                files[name].seek(0)
                return faiss.read_index(faiss.PyCallbackIOReader(files[name].read))

            try:
                backend = _BACKENDS[kind].read(read_faiss, settings, tomb)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise MarkguardError(f"{path / INDEX_FILE}: FAISS cannot read it ({first}); {REBUILD}") from None
        finally:
            for f in files.values():
                f.close()
        if backend.index.d != dim:
            raise MarkguardError(f"{path / INDEX_FILE}: holds {backend.index.d}-dim vectors but {META_FILE} says {dim}; {REBUILD}")
        if not backend.live == n_marks == count:
            raise MarkguardError(f"{path}: {INDEX_FILE} holds {backend.live:,} vectors, {MARKS_FILE} {n_marks:,} "
                                 f"marks, {META_FILE} says {count:,}; the files are from different saves; {REBUILD}")
        next_id = max(int(row[0]) if row else 0, int(header.get("next_id", 0)), max_id + 1)
        index = cls(fingerprint=fingerprint, dim=dim, backend=backend, db=db, next_id=next_id,
                    recall=header.get("recall_at_10"), recall_target=header.get("recall_target"), path=path,
                    meta=app_meta)
        index.save_id = str(header.get("save_id") or header.get("saved") or "")
        param = (header.get("params") or {}).get(backend.param_name) if backend.param_name else None
        if param is not None:
            backend.set_param(param)
        return index


# --------------------------------------------------------------------------- helpers


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


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write_text(file: Path, text: str) -> None:
    with open(file, "w", encoding="utf-8") as f:
        f.write(text)


def _sha256_of(f: BinaryIO) -> str:
    f.seek(0)
    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _json_of(f: BinaryIO, file: Path) -> dict:
    f.seek(0)
    try:
        doc = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MarkguardError(f"{file}: not valid JSON ({e}); {REBUILD}") from None
    if not isinstance(doc, dict):
        raise MarkguardError(f"{file}: holds a {type(doc).__name__}, not an object; {REBUILD}")
    return doc
