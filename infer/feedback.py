"""Feedback: reviewers' decisions (docs/contracts.md, "Decisions") read at the door, turned into a negative bank per reference and labelled examples, saved with the index."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from markguard.errors import MarkguardError
from markguard.infer.index.store import writes_index

FORMAT = "markguard-decisions/1"
DECISIONS = ("confirm", "reject", "other")
KEYS = {"format", "listing_id", "image", "brand", "mark", "box", "status", "score", "decision", "other_brand", "note", "time",
        "model", "indexes", "input", "reviewer"}
REQUIRED = ("format", "listing_id", "brand", "mark", "decision", "time", "model")


@dataclass
class Decision:
    """One reviewer's decision on one row of a scan: the row's best match was the brand (confirm), was not (reject),
    or showed ``other_brand`` instead (other)."""

    listing_id: str
    brand: str
    mark: str | None
    decision: str  # one of DECISIONS
    time: str
    model: str  # the fingerprint of the model that scanned the photo
    image: str | None = None
    box: list[float] | None = None
    other_brand: str | None = None
    note: str = ""
    status: str | None = None
    score: float | None = None
    indexes: list[dict] = field(default_factory=list)  # [{path, name, save}] of the scan
    input: str | None = None
    reviewer: str | None = None

    def to_json(self) -> dict:
        return {"format": FORMAT, "listing_id": self.listing_id, "image": self.image, "brand": self.brand, "mark": self.mark,
                "box": self.box, "status": self.status, "score": self.score, "decision": self.decision,
                "other_brand": self.other_brand, "note": self.note, "time": self.time, "model": self.model,
                "indexes": self.indexes, "input": self.input, **({"reviewer": self.reviewer} if self.reviewer else {})}

    @classmethod
    def from_json(cls, d) -> Decision:
        """A decision from one line's object; ValueError naming the field for anything else."""
        if not isinstance(d, dict):
            raise ValueError(f"a {type(d).__name__}, not a JSON object")
        missing = [k for k in REQUIRED if (k not in d if k == "mark" else d.get(k) is None)]  # mark: null for a text-only match
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        unknown = sorted(set(d) - KEYS)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}")
        if d["format"] != FORMAT:
            raise ValueError(f"format {d['format']!r} is not {FORMAT!r}")
        if d["decision"] not in DECISIONS:
            raise ValueError(f"decision {d['decision']!r} is not one of {', '.join(DECISIONS)}")
        for key in ("listing_id", "brand", "time", "model"):
            if not isinstance(d[key], str) or not d[key]:
                raise ValueError(f"{key} must be non-empty text")
        for key in ("mark", "image", "other_brand", "note", "status", "input", "reviewer"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise ValueError(f"{key} must be text or null")
        if d["decision"] == "other" and not d.get("other_brand"):
            raise ValueError("decision 'other' needs other_brand, the brand the photo shows")
        box = d.get("box")
        if box is not None and (not isinstance(box, list) or len(box) != 4 or
                                any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in box)):
            raise ValueError(f"box {box!r} is not four numbers")
        score = d.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score)):
            raise ValueError(f"score {score!r} is not a number")
        indexes = d.get("indexes") or []
        if not isinstance(indexes, list) or not all(isinstance(i, dict) for i in indexes):
            raise ValueError("indexes must be a list of objects {path, name, save}")
        return cls(d["listing_id"], d["brand"], d.get("mark"), d["decision"], d["time"], d["model"], d.get("image"), box,
                   d.get("other_brand"), d.get("note") or "", d.get("status"), None if score is None else float(score),
                   indexes, d.get("input"), d.get("reviewer"))


def read_decisions(path: str | Path) -> list[Decision]:
    """Every decision of a decisions file, in its order; the last decision on the same row (listing, brand, mark) wins.
    A line that is not a decision stops with the file, the line and what is wrong."""
    return list(_dedup(_lines(Path(path))))


def _lines(path: Path) -> Iterator[Decision]:
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise MarkguardError(f"{path}: not found; export it from report.html (the 'export decisions' button)") from None
    except IsADirectoryError:
        raise MarkguardError(f"{path}: is a folder; give the decisions file (JSON Lines) exported from report.html") from None
    with f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield Decision.from_json(json.loads(line))
                except ValueError as e:
                    raise MarkguardError(f"{path}:{n}: not a decision ({e}); see docs/contracts.md, Decisions") from None
        except UnicodeDecodeError:
            raise MarkguardError(f"{path}: not UTF-8 text; a decisions file is JSON Lines (docs/contracts.md, Decisions)") from None


def _dedup(decisions: Iterator[Decision]) -> Iterator[Decision]:
    last: dict[tuple, Decision] = {}
    for d in decisions:
        last.pop((d.listing_id, d.image, d.brand, d.mark), None)  # re-inserted: keeps the order of the final say
        last[(d.listing_id, d.image, d.brand, d.mark)] = d
    yield from last.values()


# ---------------------------------------------------------------------------------------------- the negative bank

FEEDBACK_KEY = "feedback"  # in the index's markguard.json (MarkIndex.meta): saved, checksummed and swapped in with the index
# the rule: a candidate whose region is at least (similarity - MARGIN) close to one of its reference's negatives is
# lowered by STRENGTH x (that excess); measured on the real-photo bench (benchmarks/results/feedback.md)
MARGIN = 0.02
STRENGTH = 5.0
IOU_SAME_REGION = 0.5


@dataclass
class Rule:
    margin: float = MARGIN
    strength: float = STRENGTH

    def lower(self, similarity: np.ndarray, negative: np.ndarray) -> np.ndarray:
        """Similarities lowered where the region is closer to a negative than to the reference (less ``margin``)."""
        excess = negative - similarity + self.margin
        return np.where(excess > 0, similarity - self.strength * excess, similarity)


def encode_vector(v: np.ndarray) -> str:
    return base64.b64encode(np.asarray(v, np.float16).tobytes()).decode("ascii")


def decode_vector(s: str, dim: int) -> np.ndarray:
    v = np.frombuffer(base64.b64decode(s, validate=True), np.float16)
    if v.shape != (dim,):
        raise ValueError(f"a vector of {v.size} values, not {dim}")
    return v.astype(np.float32)


def negative_bank(meta: dict | None, dim: int) -> dict[tuple[str, str], np.ndarray]:
    """(brand, mark) → its negatives (n, dim), from an index's metadata; {} when it has none."""
    doc = (meta or {}).get(FEEDBACK_KEY) or {}
    out: dict[tuple[str, str], list[np.ndarray]] = {}
    for i, n in enumerate(doc.get("negatives") or []):
        try:
            out.setdefault((str(n["brand"]), str(n["mark"])), []).append(decode_vector(n["vector"], dim))
        except (KeyError, TypeError, ValueError) as e:
            raise MarkguardError(f"markguard.json: feedback negative {i} is damaged ({e}); undo its round with "
                                 f"`markguard feedback --undo ID -i INDEX` or rebuild the index") from None
    return {k: np.stack(v) for k, v in out.items()}


def rule_of(meta: dict | None) -> Rule:
    r = ((meta or {}).get(FEEDBACK_KEY) or {}).get("rule") or {}
    try:
        return Rule(float(r.get("margin", MARGIN)), float(r.get("strength", STRENGTH)))
    except (TypeError, ValueError):
        raise MarkguardError(f"markguard.json: feedback rule {r!r} is not two numbers (margin, strength)") from None


class WithNegatives:
    """An index whose search lowers a candidate closer to its reference's negatives than to the reference; all else
    is the wrapped index's."""

    def __init__(self, index, bank: dict[tuple[str, str], np.ndarray], rule: Rule):
        self.index, self.rule = index, rule
        self._bank = bank
        self._by_id: dict[int, np.ndarray | None] = {}

    def __getattr__(self, name):
        return getattr(self.index, name)

    def __len__(self) -> int:
        return len(self.index)

    def negatives_of(self, ids) -> list[np.ndarray | None]:
        missing = [int(i) for i in ids if int(i) not in self._by_id]
        for i, rec in zip(missing, self.index.get(missing) if missing else []):
            self._by_id[i] = None if rec is None else self._bank.get((rec.brand, rec.mark))
        return [self._by_id[int(i)] for i in ids]

    def search(self, queries, k: int):
        scores, ids = self.index.search(queries, k)
        uniq = np.unique(ids[ids >= 0])
        q = np.asarray(queries, np.float32)
        for rid, neg in zip(uniq.tolist(), self.negatives_of(uniq.tolist())):
            if neg is None:
                continue
            rows, cols = np.nonzero(ids == rid)
            nearest = (q[rows] @ neg.T).max(axis=1)
            scores[rows, cols] = self.rule.lower(scores[rows, cols], nearest)
        return scores, ids


def with_negatives(index, meta: dict | None):
    """``index`` wrapped with its feedback's negative bank, or itself when it has none (the scan's hook)."""
    bank = negative_bank(meta, index.dim)
    return WithNegatives(index, bank, rule_of(meta)) if bank else index


def feedback_info(meta: dict | None) -> dict:
    """What ``index info`` lists: each round, and the bank's size by reference."""
    doc = (meta or {}).get(FEEDBACK_KEY) or {}
    per_ref: dict[str, int] = {}
    for n in doc.get("negatives") or []:
        key = f"{n.get('brand')}/{n.get('mark')}"
        per_ref[key] = per_ref.get(key, 0) + 1
    return {"rounds": doc.get("rounds") or [], "negatives": sum(per_ref.values()), "negatives_by_reference": per_ref,
            "labels": len(doc.get("labels") or []), "rule": {"margin": rule_of(meta).margin, "strength": rule_of(meta).strength}}


def labels_csv(meta: dict | None) -> str:
    """Every round's labelled examples as the truth ``markguard calibrate --combiner`` reads (listing_id,brand; an empty
    brand for a listing that shows no registered brand)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["listing_id", "brand"])
    seen = set()
    for lab in ((meta or {}).get(FEEDBACK_KEY) or {}).get("labels") or []:
        key = (lab["listing_id"], lab["brand"] or "")
        if key not in seen:
            seen.add(key)
            w.writerow(key)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- applying decisions


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def fooling_region(index, vectors: np.ndarray, boxes: np.ndarray, brand: str, mark: str | None, box) -> int | None:
    """Which of a photo's regions the decided match came from: among those overlapping ``box`` (IoU >= 0.5; all when
    none does), the one most similar to a reference of (brand, mark). None when no region reaches that mark."""
    if len(vectors) == 0:
        return None
    cand = np.arange(len(vectors))
    if box is not None:
        near = [i for i in cand if _iou(boxes[i], box) >= IOU_SAME_REGION]
        cand = np.array(near) if near else cand
    k = min(len(index), 32)
    scores, ids = index.search(np.ascontiguousarray(vectors[cand], np.float32), k)
    recs = dict(zip(np.unique(ids[ids >= 0]).tolist(), index.get(np.unique(ids[ids >= 0]).tolist())))
    best, where = -np.inf, None
    for r in range(len(cand)):
        for s, i in zip(scores[r], ids[r]):
            rec = recs.get(int(i))
            if rec is not None and rec.brand == brand and (mark is None or rec.mark == mark) and s > best:
                best, where = float(s), int(cand[r])
    return where


def _known_rows(scan: Path | None, dump: str | None) -> tuple[set, set]:
    """(listing_id, image) pairs and listing ids the decisions may name: a scan's rows, or a dump's items."""
    pairs = set()
    if scan is not None:
        from markguard.infer.results import RESULTS, read_results

        for row in read_results(Path(scan) / RESULTS, fix=f"give the output folder of the scan the decisions were made on"):
            pairs.add((row.listing_id, row.image))
    else:
        from markguard.datasets.listings import open_dump

        for item in open_dump(dump):
            pairs.add((item.listing_id, item.image))
    return pairs, {p[0] for p in pairs}


def _regions_from_scan(scan: Path, wanted: set[tuple[str, str | None]], name: str) -> dict:
    from markguard.infer.rematch import StoredEmbeddings

    out = {}
    for p in StoredEmbeddings(scan).photos():
        for key in ((p.listing_id, p.image), (p.listing_id, None)):
            if key in wanted:
                k = next((k for k in p.regions if k.index == name), None) or (p.regions[0] if p.regions else None)
                if k is not None:
                    out[key] = (k.vectors, k.boxes)
    return out


def _regions_by_embedding(dump: str, wanted: set[tuple[str, str | None]], index_path: Path, model, device: str) -> dict:
    """Each wanted photo decoded and embedded again as a scan would (its model, regions and looks), its regions kept."""
    from markguard.datasets.listings import open_dump
    from markguard.infer.decide import Policy
    from markguard.infer.decode import DecodedBatches, RunFailure, batch_loader
    from markguard.infer.options import ScanOptions, StageTimes
    from markguard.infer.pipeline import process_batch
    from markguard.infer.plan import build_plan
    from markguard.infer.searchers import load_searchers

    items = [it for it in open_dump(dump) if (it.listing_id, it.image) in wanted or (it.listing_id, None) in wanted]
    searchers = load_searchers([index_path], model, device)
    opts = ScanOptions(device=device, verify=False, ocr=False, combiner=None, keep_embeddings="fp16", workers=0)
    plan = build_plan(searchers, Policy(1.0, 1.0), opts)  # the scan's own regions, looks and embedding
    ds = DecodedBatches(lambda: iter(items), size=plan.size, mean=plan.mean, std=plan.std, batch_size=8, hires=plan.hires)
    out = {}
    for batch in batch_loader(ds, 0):
        if isinstance(batch, RunFailure):
            raise MarkguardError(batch.message)
        for row in process_batch(batch, plan, StageTimes()):
            if row.kept:
                k = row.kept[0]
                out[(row.listing_id, row.image)] = out[(row.listing_id, None)] = (k.vectors, k.boxes)
    return out


@writes_index("index_path")  # the whole load-change-save under the index's writer lock, as `index add|remove`
def apply_feedback(decisions_path: str | Path, index_path: str | Path, *, scan: str | Path | None = None,
                   dump: str | None = None, skip_unknown: bool = False, model: str | Path | None = None,
                   device: str = "cpu", rule: Rule | None = None) -> dict:
    """One round of feedback: the decisions checked against the index and the scan, rejected matches' regions added to
    their references' negative banks, every decision a labelled example; saved with the index in one atomic save.
    Returns the round's summary (its id undoes it)."""
    from markguard.infer.index import MarkIndex

    decisions_path, index_path = Path(decisions_path), Path(index_path)
    raw = decisions_path.read_bytes() if decisions_path.is_file() else None
    decisions = read_decisions(decisions_path)
    if not decisions:
        raise MarkguardError(f"{decisions_path}: holds no decision; export them from report.html after deciding some rows")
    index = MarkIndex.load(index_path)
    meta = dict(index.require_meta())
    doc = dict(meta.get(FEEDBACK_KEY) or {})
    digest = hashlib.sha256(raw).hexdigest()[:16]
    for r in doc.get("rounds") or []:
        if r.get("digest") == digest:
            raise MarkguardError(f"{decisions_path}: already applied to {index_path} as round {r['id']}; "
                                 f"undo it first with `markguard feedback --undo {r['id']} -i {index_path}`")
    # the model and the index the decisions were made with
    for d in decisions:
        if d.model != index.fingerprint:
            raise MarkguardError(f"{decisions_path}: decisions were made on a scan by model {d.model}, but {index_path} was built by "
                                 f"{index.fingerprint}; apply them to the index that scan searched")
        names = {i.get("name") or Path(str(i.get("path") or "")).name for i in d.indexes}
        paths = {str(i.get("path")) for i in d.indexes}
        if d.indexes and index_path.name not in names and str(index_path.resolve()) not in paths:
            raise MarkguardError(f"{decisions_path}: decisions were made on a scan of index {', '.join(sorted(n for n in names if n))}, "
                                 f"not {index_path}; apply them to that index")
    marks = {(r.brand, r.mark) for r in index.records()}
    brands = {b for b, _ in marks}
    for n, d in enumerate(decisions, 1):
        if (d.brand, d.mark) not in marks and not (d.mark is None and d.brand in brands):
            raise MarkguardError(f"{decisions_path}: decision {n} (listing {d.listing_id!r}) names mark {d.brand}/{d.mark}, "
                                 f"which {index_path} does not hold; apply the decisions to the index the scan searched")
    if scan is None and dump is None:
        dump = next((d.input for d in decisions if d.input), None)
        if dump is None:
            raise MarkguardError(f"{decisions_path}: names no scanned dump (key input); give --scan OUT or --dump DUMP")
    if scan is not None and not (Path(scan) / "results.jsonl").is_file():
        raise MarkguardError(f"{scan}: no results.jsonl; give the output folder of the scan the decisions were made on")
    pairs, listings = _known_rows(Path(scan) if scan is not None else None, dump)
    unknown = [d for d in decisions if ((d.listing_id, d.image) not in pairs if d.image is not None else d.listing_id not in listings)]
    if unknown and not skip_unknown:
        where = f"the scan in {scan}" if scan is not None else f"the dump {dump}"
        raise MarkguardError(f"{decisions_path}: listing {unknown[0].listing_id!r} (and {len(unknown) - 1} more) is not in {where}; "
                             "give the scan the decisions were made on, or --skip-unknown to leave such decisions out")
    skipped = len(unknown)
    dropped = {id(d) for d in unknown}
    decisions = [d for d in decisions if id(d) not in dropped]

    # the regions that fooled a reference: from the scan's stored embeddings, else embedded again from the photo
    wrong = [d for d in decisions if d.decision in ("reject", "other")]
    wanted = {(d.listing_id, d.image) for d in wrong}
    from markguard.infer.rematch import EMBEDDINGS

    if scan is not None and (Path(scan) / EMBEDDINGS).is_dir():
        regions, source = _regions_from_scan(Path(scan), wanted, index_path.name), "stored embeddings"
    elif wanted:
        if dump is None:
            from markguard.infer.results import read_summary

            dump = read_summary(scan).get("input")
        regions, source = _regions_by_embedding(dump, wanted, index_path, model, device), "photos embedded again"
    else:
        regions, source = {}, "none needed"
    rid = "fb-" + uuid.uuid4().hex[:10]
    negatives, missing = [], 0
    for d in wrong:
        got = regions.get((d.listing_id, d.image))
        where = None if got is None else fooling_region(index, got[0], got[1], d.brand, d.mark, d.box)
        if where is None:
            missing += 1
            continue
        negatives.append({"round": rid, "brand": d.brand, "mark": d.mark, "listing_id": d.listing_id, "image": d.image,
                          "vector": encode_vector(got[0][where])})
    labels = [{"round": rid, "listing_id": d.listing_id, "image": d.image,
               "brand": d.brand if d.decision == "confirm" else d.other_brand if d.decision == "other" else "",
               "decided": d.decision, "match": f"{d.brand}/{d.mark}"} for d in decisions]
    counts = {k: sum(d.decision == k for d in decisions) for k in DECISIONS}
    summary = {"id": rid, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "decisions": str(decisions_path),
               "digest": digest, "counts": counts, "skipped_unknown": skipped, "negatives": len(negatives),
               "no_region": missing, "labels": len(labels), "regions_from": source}
    rule = rule or rule_of(meta)
    doc["rounds"] = [*(doc.get("rounds") or []), summary]
    doc["negatives"] = [*(doc.get("negatives") or []), *negatives]
    doc["labels"] = [*(doc.get("labels") or []), *labels]
    doc["rule"] = {"margin": rule.margin, "strength": rule.strength}
    meta[FEEDBACK_KEY] = doc
    index.meta = meta
    index.save(index_path)  # one atomic save: an interrupted feedback leaves the previous index whole
    return summary


@writes_index("index_path")
def undo_feedback(index_path: str | Path, round_id: str) -> dict:
    """Remove one round's negatives and labels, in one atomic save; returns what was removed."""
    from markguard.infer.index import MarkIndex

    index_path = Path(index_path)
    index = MarkIndex.load(index_path)
    meta = dict(index.require_meta())
    doc = dict(meta.get(FEEDBACK_KEY) or {})
    rounds = doc.get("rounds") or []
    if round_id not in {r.get("id") for r in rounds}:
        known = ", ".join(r.get("id", "?") for r in rounds) or "none"
        raise MarkguardError(f"{index_path}: no feedback round {round_id!r} (rounds: {known}); see `markguard index info {index_path}`")
    removed = {"id": round_id, "negatives": sum(n.get("round") == round_id for n in doc.get("negatives") or []),
               "labels": sum(lab.get("round") == round_id for lab in doc.get("labels") or [])}
    doc["rounds"] = [r for r in rounds if r.get("id") != round_id]
    doc["negatives"] = [n for n in doc.get("negatives") or [] if n.get("round") != round_id]
    doc["labels"] = [lab for lab in doc.get("labels") or [] if lab.get("round") != round_id]
    meta[FEEDBACK_KEY] = doc
    index.meta = meta
    index.save(index_path)
    return removed
