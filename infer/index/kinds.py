"""Index kinds by name, each carrying its settings, and the memory model that chooses between them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum

from markguard.errors import MarkguardError

REBUILD = "rebuild it with `markguard index build`"
AUTO_FLAT_BELOW = 50_000  # exact search stays fast (< 1 ms a query on 2 cores) up to about here
IDMAP2_REVERSE_BYTES = 40  # IndexIDMap2's unordered_map<id, slot>: node + bucket per entry
IVFPQ_MIN_VECTORS = 1_000


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


def _pq_m(dim: int, dims_per_code: int) -> int:
    """Largest sub-quantiser count dividing dim with sub-vectors at least dims_per_code wide (even: fast scan packs pairs)."""
    cap = max(2, dim // dims_per_code)
    return max([m for m in range(2, cap + 1, 2) if dim % m == 0] or [1])


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
