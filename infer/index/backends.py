"""FAISS backends, one class a kind, each owning its FAISS objects (MarkIndex holds ids, metadata, tuning and files)."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from markguard.errors import MarkguardError
from markguard.infer.index.kinds import (IDMAP2_REVERSE_BYTES, IVFPQ_MIN_VECTORS, FlatSettings, HNSWSettings, IndexKind,
                                         IVFPQSettings, _nbits, _nlist, _pq_m)
from markguard.infer.index.tuning import RECALL_K

INDEX_FILE = "index.faiss"
REFINE_FILE = "refine.faiss"


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

def _xb_view(flat: faiss.IndexFlat) -> np.ndarray:
    # a view, not a copy: the vectors of a 1M index are a GB; valid until the index is next mutated
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)


def _ids_of(idmap) -> np.ndarray:
    return faiss.vector_to_array(idmap.id_map).astype(np.int64, copy=False)


def _search(index, q, k: int, params):
    """``index.search`` with search parameters, past faiss.contrib.torch_utils' replacement.

    pytorch-metric-learning's inference utilities import that module, which swaps every index's
    ``search`` for a torch-aware one without ``params``; it keeps faiss' own as ``search_numpy``.
    """
    return getattr(index, "search_numpy", index.search)(q, k, params=params)


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
        return _search(self.index, q, k, params)

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
            return _search(self.index, q, k, outer)
        return _search(self.index, q, k, params)

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
