"""Rematch: a scan's stored region embeddings (``scan --keep-embeddings``) searched again against an index that gained brands, without decoding or embedding a photo.

A scan with ``--keep-embeddings`` writes, beside its results, every searched region of every photo:
``OUT/embeddings/part-<first row>.parquet`` (one row a photo and index: the results.jsonl line it
belongs to, listing id, image, index name, region count, the vectors as float16 bytes or product-
quantised codes, the boxes as uint16) and ``OUT/embeddings/embeddings.json`` (format, the model's
fingerprint, dim, encoding, the PQ codebook when there is one). The vectors are pinned to the
model like an index is: ``rematch`` refuses an index another model built.

``rematch`` searches the stored regions with the scan's own search (``infer/search.py``), keeps the
matches to marks the index did not hold when the photo was scanned (the scan's ``references``), adds
them to the row's own matches (which keep their evidence) and decides again with the scan's policy;
a scan decided by a combiner decides the new matches with it too, their verification and text "not seen" (the
photo is not read again); the rows whose status, brand or mark changed are written, in results.jsonl's form, to
``OUT/rematch.jsonl`` with ``OUT/rematch.json`` saying against what and how fast.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from markguard.errors import MarkguardError
from markguard.fsio import atomic_path, atomic_write_text, own_folder

EMBEDDINGS = "embeddings"  # OUT/embeddings/
MANIFEST = "embeddings.json"
FORMAT = "markguard-embeddings/1"
ENCODINGS = ("fp16", "pq")
FLUSH_ROWS = 2048  # photos a part file holds: a killed scan loses at most this many photos' embeddings
PQ_M = 32  # product quantiser: 32 sub-vectors of 8 bits, 32 bytes a region
PQ_TRAIN = 4096  # regions the codebook is trained on (the first ones the scan sees)
REMATCH_ROWS = "rematch.jsonl"
REMATCH_SUMMARY = "rematch.json"
NOT_KEPT = "was scanned without --keep-embeddings; scan it again with `markguard scan DUMP -i INDEX -o OUT --keep-embeddings`"


@dataclass
class KeptRegions:
    """The regions one photo was searched with, for one index: float32 vectors (n, dim) and photo-pixel boxes (n, 4)."""

    index: str
    vectors: np.ndarray
    boxes: np.ndarray


def keep_regions(kept: list[list[KeptRegions]], name: str, vectors: np.ndarray, counts: list[int], boxes: list) -> None:
    """The pipeline's hook: append each photo's searched regions (``vectors`` as search got them) to ``kept[i]``."""
    start = 0
    for i, (n, b) in enumerate(zip(counts, boxes)):
        kept[i].append(KeptRegions(name, vectors[start:start + n], np.asarray(b, np.float32).reshape(-1, 4)))
        start += n


def attach_regions(rows: list, ok: list[int], kept: list[list[KeptRegions]]) -> None:
    """Put each decoded photo's kept regions on its row (``ScanRow.kept``); error rows keep none."""
    for i, pos in enumerate(ok):
        rows[pos].kept = kept[i]


def _schema():
    import pyarrow as pa

    return pa.schema([("row", pa.int64()), ("listing_id", pa.string()), ("image", pa.string()), ("index", pa.string()),
                      ("n", pa.int32()), ("vectors", pa.binary()), ("boxes", pa.binary())])


class EmbeddingStore:
    """Writes OUT/embeddings/ while a scan runs; rows are numbered as results.jsonl's lines (a resume continues)."""

    def __init__(self, out_dir: Path, *, model: str, dim: int, encoding: str = "fp16", skip: int = 0):
        from markguard.infer.writer import require_pyarrow

        require_pyarrow()
        if encoding not in ENCODINGS:
            raise MarkguardError(f"--keep-embeddings {encoding!r}: choose {' or '.join(ENCODINGS)}")
        self.dir = own_folder(out_dir, EMBEDDINGS)  # never a link planted in a shared output folder: a resume deletes parts here
        self.model, self.dim, self.encoding = model, dim, encoding
        self.row = skip
        self.buf: list[dict] = []
        self.codebook = None
        self._pending: list[dict] = []  # pq: photos held until the codebook is trained
        manifest = _read_manifest(self.dir) if skip else None
        if manifest is not None:
            if manifest.get("model") != model or manifest.get("encoding") != encoding:
                raise MarkguardError(f"{self.dir / MANIFEST}: kept by another model or encoding; scan into a new -o")
            if manifest.get("codebook"):
                self.codebook = _codebook_from_json(manifest["codebook"], dim)
        for part in self.dir.glob("part-*.parquet"):  # a resume rewrites the photos from ``skip`` on
            if int(part.stem.split("-")[1]) >= skip:
                part.unlink()
        if manifest is None:
            self._write_manifest()

    def add(self, row) -> None:
        """One result row, in order; its kept regions (none for an error row) go to the next part file."""
        for k in getattr(row, "kept", None) or []:
            self.buf.append({"row": self.row, "listing_id": row.listing_id, "image": row.image, "index": k.index,
                             "n": len(k.vectors), "vectors": np.asarray(k.vectors, np.float32), "boxes": k.boxes})
        self.row += 1
        if len(self.buf) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.encoding == "pq" and self.codebook is None:
            self._pending += self.buf
            self.buf = []
            if sum(r["n"] for r in self._pending) < PQ_TRAIN:
                return
            self._train(self._pending)
            self.buf, self._pending = self._pending, []
        if not self.buf:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        first = self.buf[0]["row"]
        recs = [{**r, "vectors": self._encode(r["vectors"]), "boxes": _boxes_bytes(r["boxes"])} for r in self.buf]
        with atomic_path(self.dir / f"part-{first:012d}.parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(recs, schema=_schema()), tmp, compression="zstd")
        self.buf = []

    def finish(self) -> None:
        if self.encoding == "pq" and self.codebook is None and (self._pending or self.buf):
            self._train(self._pending + self.buf)
            self.buf, self._pending = self._pending + self.buf, []
        self.flush()

    def _train(self, recs: list[dict]) -> None:
        import faiss

        x = np.concatenate([r["vectors"] for r in recs]).astype(np.float32)[:PQ_TRAIN]
        nbits = 8 if len(x) >= 256 * 4 else max(1, int(np.log2(max(2, len(x) // 4))))
        pq = faiss.ProductQuantizer(self.dim, PQ_M, nbits)
        pq.train(np.ascontiguousarray(x))
        self.codebook = pq
        self._write_manifest()

    def _encode(self, v: np.ndarray) -> bytes:
        if self.encoding == "fp16":
            return np.ascontiguousarray(v, np.float16).tobytes()
        return self.codebook.compute_codes(np.ascontiguousarray(v, np.float32)).tobytes()

    def _write_manifest(self) -> None:
        doc = {"format": FORMAT, "model": self.model, "dim": self.dim, "encoding": self.encoding,
               "codebook": None if self.codebook is None else _codebook_to_json(self.codebook)}
        atomic_write_text(self.dir / MANIFEST, json.dumps(doc) + "\n")


def _boxes_bytes(boxes: np.ndarray) -> bytes:
    return np.clip(np.rint(boxes), 0, 65535).astype("<u2").tobytes()  # photo pixels: uint16 holds any decodable photo


def _codebook_to_json(pq) -> dict:
    import faiss

    cents = faiss.vector_to_array(pq.centroids).astype(np.float32)
    return {"m": pq.M, "nbits": pq.nbits, "centroids": base64.b64encode(cents.tobytes()).decode("ascii")}


def _codebook_from_json(doc: dict, dim: int):
    import faiss

    try:
        pq = faiss.ProductQuantizer(dim, int(doc["m"]), int(doc["nbits"]))
        cents = np.frombuffer(base64.b64decode(doc["centroids"]), np.float32)
        faiss.copy_array_to_vector(cents, pq.centroids)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise MarkguardError(f"embeddings.json: unreadable codebook ({e}); scan again with --keep-embeddings") from None
    return pq


def _read_manifest(folder: Path) -> dict | None:
    try:
        doc = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise MarkguardError(f"{folder / MANIFEST}: unreadable ({e}); scan again with --keep-embeddings") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise MarkguardError(f"{folder / MANIFEST}: not a markguard embeddings manifest ({FORMAT}); scan again with --keep-embeddings")
    return doc


@dataclass
class StoredPhoto:
    row: int
    listing_id: str
    image: str
    regions: list[KeptRegions]


class StoredEmbeddings:
    """A scan's kept regions, read back part by part (memory bounded by one part)."""

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        self.dir = self.out / EMBEDDINGS
        manifest = _read_manifest(self.dir) if self.dir.is_dir() else None
        if manifest is None:
            raise MarkguardError(f"{self.out} {NOT_KEPT}")
        self.model = str(manifest.get("model"))
        self.dim = int(manifest.get("dim") or 0)
        self.encoding = manifest.get("encoding")
        if self.encoding not in ENCODINGS or self.dim < 1:
            raise MarkguardError(f"{self.dir / MANIFEST}: unknown encoding {self.encoding!r} or dim; scan again with --keep-embeddings")
        self.codebook = _codebook_from_json(manifest["codebook"], self.dim) if self.encoding == "pq" else None

    def parts(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.parquet"), key=lambda p: int(p.stem.split("-")[1]))

    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.parts()) + (self.dir / MANIFEST).stat().st_size

    def photos(self) -> Iterator[StoredPhoto]:
        """Photos in row order; a row a later part wrote again (a resumed scan) is read from that part."""
        import pyarrow.parquet as pq

        parts = self.parts()
        starts = [int(p.stem.split("-")[1]) for p in parts]
        for i, part in enumerate(parts):
            limit = starts[i + 1] if i + 1 < len(parts) else None
            t = pq.read_table(part).to_pydict()
            current: StoredPhoto | None = None
            for row, lid, image, name, n, vec, box in zip(t["row"], t["listing_id"], t["image"], t["index"], t["n"], t["vectors"], t["boxes"]):
                if limit is not None and row >= limit:
                    break
                if current is None or current.row != row:
                    if current is not None:
                        yield current
                    current = StoredPhoto(row, lid, image, [])
                current.regions.append(KeptRegions(name, self._decode(vec, n), np.frombuffer(box, "<u2").reshape(n, 4).astype(np.float32)))
            if current is not None:
                yield current

    def _decode(self, data: bytes, n: int) -> np.ndarray:
        if self.encoding == "fp16":
            return np.frombuffer(data, np.float16).reshape(n, self.dim).astype(np.float32)
        codes = np.frombuffer(data, np.uint8).reshape(n, -1)
        return self.codebook.decode(np.ascontiguousarray(codes)) if n else np.zeros((0, self.dim), np.float32)


def rematch(out_dir: str | Path, index_paths: list[str | Path], *, model: str | Path | None = None, batch: int = 512,
            write: bool = True) -> dict:
    """Search ``out_dir``'s stored regions against ``index_paths``; returns the summary and writes the changed rows."""
    from markguard.infer.results import RESULTS, ScanRow, read_results, read_summary
    from markguard.infer.decide import policy_for as _policy
    from markguard.infer.options import ScanOptions
    from markguard.infer.searchers import load_searchers
    from markguard.infer.search import search_batch

    out = Path(out_dir)
    t0 = time.perf_counter()
    stored = StoredEmbeddings(out)
    summary = read_summary(out, fix=f"re-run `markguard scan DUMP -o {out} --keep-embeddings`")
    searchers = load_searchers(index_paths, model, "cpu")
    for s in searchers:
        if s.card.fingerprint != stored.model:
            raise MarkguardError(f"{out}: its regions were embedded by model {stored.model}, but index {s.path} was built by "
                                 f"{s.card.fingerprint}; rematch needs an index of the same model (or rescan with the new model)")
    names = {s.name for s in searchers}
    scanned = {str(s.get("name") or "") for s in summary.get("indexes") or []} or {""}
    if names != scanned:
        raise MarkguardError(f"{out}: scanned with index(es) named {sorted(scanned)}, rematch given {sorted(names)}; "
                             "give the same index folders (grown since) in the same order")
    known = set((summary.get("references") or {}))  # "brand/mark" the scan could match
    opts_doc = summary.get("options") or {}
    opts = ScanOptions(k=int(opts_doc.get("k", 3)), max_matches=int(opts_doc.get("max_matches", 5)),
                       flag=opts_doc.get("flag"), review=opts_doc.get("review"))
    combiner = None
    if (summary.get("policy") or {}).get("on") == "probability":  # decided on the scan's combiner: so are the new matches
        from markguard.infer.combine import load_for_scan

        path = opts_doc.get("combiner")
        if not path or not Path(path).is_file():
            raise MarkguardError(f"{out}: scanned with the combiner {path}, which is no longer there; restore it, or rescan")
        combiner, _ = load_for_scan(path, searchers, opts)
    policy = _policy(searchers, opts, combiner)
    rows = read_results(out / RESULTS, fix=f"re-run `markguard scan DUMP -o {out}`")
    changed, n_photos, n_regions, new_matches = [], 0, 0, 0
    t_search = 0.0
    pending: list = []

    def run(pending):
        nonlocal new_matches, t_search
        t = time.perf_counter()
        for s in searchers:
            regs = [next((k for k in p.regions if k.index == s.name), None) for p, _ in pending]
            vecs = [k.vectors if k is not None else np.zeros((0, stored.dim), np.float32) for k in regs]
            found = search_batch(s.index, np.concatenate(vecs) if vecs else np.zeros((0, stored.dim), np.float32),
                                 [len(v) for v in vecs], [k.boxes if k is not None else np.zeros((0, 4)) for k in regs],
                                 k=opts.k, max_matches=opts.max_matches, index_name=s.name or None, bias=s.bias)
            for (p, row), ms in zip(pending, found):
                fresh = [m for m in ms if f"{m.brand}/{m.mark}" not in known]
                new_matches += len(fresh)
                if not fresh:
                    continue
                if combiner is not None:  # no verification or text for a photo not read again: those signals "not seen"
                    combiner.score_matches(fresh)
                merged = sorted(row.matches + fresh, key=lambda m: -policy.value(m))
                status, decider = policy.decide(merged, row.seller_id)
                if status != row.status or (status != "pass" and (decider.brand, decider.mark) != (row.brand, row.mark)):
                    shown = [m for m in merged if policy.value(m) >= policy.thresholds(m.brand, m.index)[1]][:opts.max_matches]
                    best = max((m.score for m in merged), default=None)
                    changed.append(ScanRow(row.listing_id, row.image, row.seller_id, status,
                                           best if status == "pass" else decider.score,
                                           None if status == "pass" else decider.brand, None if status == "pass" else decider.mark,
                                           None if status == "pass" else decider.box, shown))
        t_search += time.perf_counter() - t

    photos = stored.photos()
    nxt = next(photos, None)
    for i, row in enumerate(rows):
        while nxt is not None and nxt.row < i:
            nxt = next(photos, None)
        if nxt is None or nxt.row != i or row.status == "error":
            continue
        if nxt.listing_id != row.listing_id or nxt.image != row.image:
            raise MarkguardError(f"{out / EMBEDDINGS}: row {i} holds {nxt.listing_id!r} but results.jsonl line {i + 1} is "
                                 f"{row.listing_id!r}; the embeddings belong to another scan; rescan with --keep-embeddings")
        n_photos += 1
        n_regions += sum(len(k.vectors) for k in nxt.regions)
        pending.append((nxt, row))
        if len(pending) >= batch:
            run(pending)
            pending = []
    if pending:
        run(pending)
    elapsed = time.perf_counter() - t0
    result = {
        "results": str(out / REMATCH_ROWS) if write else None,
        "photos": n_photos,
        "regions": n_regions,
        "new_matches": new_matches,
        "changed": len(changed),
        "counts": {k: sum(r.status == k for r in changed) for k in ("flag", "review", "pass", "allowed")},
        "seconds": round(elapsed, 3),
        "search_seconds": round(t_search, 3),
        "indexes": [{"path": str(s.path.resolve()), "save": getattr(s.index, "save_id", ""), "vectors": len(s.index)} for s in searchers],
        "encoding": stored.encoding,
        "model": stored.model,
    }
    if write:
        from markguard.fsio import atomic_write_bytes

        atomic_write_bytes(out / REMATCH_ROWS, b"".join(json.dumps(r.to_json(), ensure_ascii=False).encode() + b"\n" for r in changed))
        atomic_write_text(out / REMATCH_SUMMARY, json.dumps(result, indent=2) + "\n")
    result["rows"] = changed
    return result
