"""The brand index: embeddings of genuine marks in FAISS, their records in SQLite, saved as one folder.

Layout of a saved index (a folder)::

    index.faiss    the FAISS index; ids inside it are the stable mark ids
    refine.faiss   ivfpq only: 8-bit copies of the vectors, to re-rank PQ candidates with near-exact scores
    marks.sqlite   marks(id, brand, mark, source, added), meta(next_id), tombstones(id) (removed ids still
                   in a graph or fast-scan lists, filtered at search until a save compacts them)
    markguard.json the application's metadata (MarkIndex.meta): the model that built the index, the brands'
                   settings (authorised sellers, thresholds), the galleries; part of the same atomic save
    index.json     save id, fingerprint, dim, kind, settings, search params, count, sha256 of every file above

Vectors are L2-normalised, so inner product is cosine similarity and a score is comparable with the
calibrated thresholds of the model card whichever kind of index holds the vectors.

The package's modules: ``kinds`` (index kinds and the memory model), ``backends`` (the FAISS objects of
each kind), ``tuning`` (recall against exact search), ``records`` (the SQLite record store), ``store``
(the durable save and the load), ``markindex`` (the MarkIndex that joins them).
"""

from markguard.infer.index.backends import INDEX_FILE, REFINE_FILE
from markguard.infer.index.kinds import (AUTO_FLAT_BELOW, IVFPQ_MIN_VECTORS, REBUILD, FlatSettings, HNSWSettings, IndexKind,
                                         IVFPQSettings, choose_kind, estimate_bytes)
from markguard.infer.index.markindex import MarkIndex
from markguard.infer.index.records import MarkRecord
from markguard.infer.index.store import APP_META, FORMAT_VERSION, MARKS_FILE, META_FILE
from markguard.infer.index.tuning import RECALL_K, TUNE_QUERIES, exact_search, recall_at_k

__all__ = ["APP_META", "AUTO_FLAT_BELOW", "FORMAT_VERSION", "INDEX_FILE", "IVFPQ_MIN_VECTORS", "MARKS_FILE", "META_FILE",
           "REBUILD", "RECALL_K", "REFINE_FILE", "TUNE_QUERIES", "FlatSettings", "HNSWSettings", "IVFPQSettings", "IndexKind",
           "MarkIndex", "MarkRecord", "choose_kind", "estimate_bytes", "exact_search", "recall_at_k"]
