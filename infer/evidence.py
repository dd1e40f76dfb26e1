"""Evidence: what each signal says about one candidate (a brand's mark in a region of a photo), by name, for the combiner.

A signal is one typed record and one :class:`Signal` entry in ``SIGNALS``: the stage that produces it
in a scan (infer/plan.py puts the producers of the signals a scan collects in its stage list), how
the record is written into a match's ``evidence`` in results.jsonl, and which numbers it gives the
combiner. A new signal is one module (its record, its producer) and one ``register`` call.
A signal that did not run for a candidate gives its features as 0 with ``<name>_seen`` = 0, so
the combiner learns what "not checked" means apart from "checked and failed".

The scan's stages carry the records themselves on each :class:`Candidate`; the JSON form is made
once, when a row is written. The combiner's numbers are rounded as results.jsonl rounds them, in
each signal's ``encode`` (and only there), so a combiner fitted on a scan's results sees at scan time
exactly the numbers it was fitted on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from markguard.errors import MarkguardError
from markguard.infer.ocr import OcrRequest

DIGITS = 4  # results.jsonl's precision for evidence numbers, and so the precision the combiner reads them at


def _r(v: float) -> float:
    return round(float(v), DIGITS)


@dataclass(frozen=True)
class Similarity:
    """The embedding's cosine similarity between the region and the mark's reference."""

    value: float


@dataclass(frozen=True)
class SimilarityNorm:
    """The similarity normalised by the reference's background level (``infer/bank.py``): a hub reference, close to
    almost any region, scores high against photos that do not show it; above its own background it does not."""

    value: float  # (similarity - background) / (1 - background)
    background: float  # the reference's mean similarity to its k nearest mark-free bank regions (its bias)


@dataclass(frozen=True)
class Geometry:
    """Keypoint verification of the candidate against its reference: RANSAC inliers, and the share of the reference's keypoints they cover."""

    inliers: int
    coverage: float  # inliers / reference keypoints, in [0, 1]
    verified: bool  # a plausible homography was found
    outline: tuple[tuple[float, float], ...] | None = None  # the reference's corners projected into the photo's pixels, when verified
    mirrored: bool = False  # verified against the mark's mirror image (a flipped copy)


@dataclass(frozen=True)
class Text:
    """The text read in (or around) the candidate's region, and which registered brand it names, if any.

    ``text`` None with a ``reason`` is "no text evidence" (OCR skipped, failed or timed out);
    ``text`` set with ``brand`` None is text that names no registered brand.
    """

    text: str | None
    brand: str | None = None  # the brand the text names (maybe another than the candidate's: a veto)
    alias: str | None = None
    distance: int | None = None  # edits from the brand's name, after folding
    reason: str | None = None


@dataclass
class Candidate:
    """One (brand, mark, region) of a photo and the evidence collected for it, keyed by signal name: a scan's match
    as the stages carry it (``to_json`` is its form in results.jsonl, as ``results.Match`` reads it back)."""

    brand: str
    mark: str | None  # None for a candidate only the text proposed (no region of the photo matched a mark of it)
    box: list[int] | None  # photo pixels
    evidence: dict[str, object] = field(default_factory=dict)
    probability: float | None = None  # set by a combiner
    index: str | None = None  # which index it came from, when a scan searches several
    score: float = 0.0  # what the thresholds apply to without a combiner: the similarity (normalised, verified)

    def record(self, name: str):
        """The signal's record; a matched candidate without a similarity record has its score as the similarity
        (a scan that measured nothing beyond it), one only the text found has none."""
        ev = self.evidence.get(name)
        if ev is None and name == "similarity" and self.mark is not None:
            return Similarity(float(self.score))
        return ev

    def with_similarity(self) -> Candidate:
        """This candidate with its similarity as a record of its own (before something changes the score)."""
        if "similarity" in self.evidence or self.mark is None:
            return self
        return replace(self, evidence={"similarity": Similarity(float(self.score)), **self.evidence})

    def evidence_json(self) -> dict:
        out: dict = {}
        for name, sig in SIGNALS.items():  # the registry's order, whatever order the stages added them in
            ev = self.evidence.get(name)
            if ev is not None:
                out.update(sig.to_json(ev))
        return out

    def to_json(self) -> dict:
        """The match as results.jsonl holds it (docs/contracts.md)."""
        d = {"brand": self.brand, "mark": self.mark, "score": _r(self.score), "box": self.box}
        if self.index is not None:
            d["index"] = self.index
        if self.evidence:
            d["evidence"] = self.evidence_json()
        if self.probability is not None:
            d["probability"] = _r(self.probability)
        return d


@dataclass(frozen=True)
class Signal:
    """A kind of evidence: its record type, its JSON form in a match, and the combiner's numbers from it."""

    name: str
    kind: type
    features: tuple[str, ...]  # names of the numbers ``encode`` returns, "<name>_seen" first
    encode: Callable[[object, Candidate], tuple[float, ...]]  # the record (never None) and its candidate -> the numbers after "_seen"
    to_json: Callable[[object], dict]
    from_json: Callable[[dict], object | None]  # a match's ``evidence`` -> the record, None when absent
    # whether a scan with these ``ScanOptions`` and searchers collects it at all (a combiner treats a signal
    # no candidate can have apart from one a candidate merely lacks)
    collected: Callable[[object, list], bool] = lambda opts, searchers: True
    # its producer stage, "module:Class" (imported when a scan plans it, as an entry point is) or the class itself, whose
    # ``plan(scan_plan, searcher_plan)`` builds it (infer/plan.py): run after each index's search when ``per_index``, else
    # once a batch after every index; None for the signals the search stage itself gives (similarity)
    producer: str | type | None = None
    per_index: bool = False
    opt_in: bool = False  # collected only when named with ``--signal`` (ScanOptions.signals): its flag


SIGNALS: dict[str, Signal] = {}


def register(signal: Signal) -> Signal:
    if signal.name in SIGNALS:
        raise ValueError(f"evidence signal '{signal.name}' is registered twice")
    SIGNALS[signal.name] = signal
    return signal


def feature_names(signals: list[str] | None = None) -> list[str]:
    return [f for name in (signals or list(SIGNALS)) for f in SIGNALS[name].features]


def encode(candidate: Candidate, signals: list[str] | None = None) -> np.ndarray:
    """The combiner's input for one candidate: each signal's numbers, zeros where it gave no evidence."""
    out: list[float] = []
    for name in signals or list(SIGNALS):
        sig = SIGNALS[name]
        ev = candidate.record(name)
        if ev is None:
            out += [0.0] * len(sig.features)
        else:
            out += [1.0, *map(float, sig.encode(ev, candidate))]
    return np.asarray(out, dtype=np.float64)


def candidate_from_json(match: dict) -> Candidate:
    """A match as written in results.jsonl back into a candidate with typed evidence; a match whose evidence has
    no ``similarity`` (a scan that measured nothing beyond it, or from before evidence) keeps its ``score`` as the similarity,
    except a match only the text found (``mark`` null), which has none."""
    raw = dict(match.get("evidence") or {})
    if "similarity" not in raw and match.get("mark") is not None:  # a match only the text found has no similarity
        raw["similarity"] = match.get("score")
    evidence = {}
    for name, sig in SIGNALS.items():
        ev = sig.from_json(raw)
        if ev is not None:
            evidence[name] = ev
    return Candidate(match["brand"], match.get("mark"), match.get("box"), evidence, match.get("probability"), match.get("index"))


def _num(raw: dict, key: str, kind=float):
    v = raw.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise MarkguardError(f"evidence '{key}' is {v!r}, not a number")
    return kind(v)


# --------------------------------------------------------------------------- the signals

register(Signal(
    "similarity", Similarity, ("similarity_seen", "similarity"),
    encode=lambda ev, c: (_r(ev.value),),
    to_json=lambda ev: {"similarity": _r(ev.value)},
    from_json=lambda raw: None if _num(raw, "similarity") is None else Similarity(_num(raw, "similarity")),
))

register(Signal(
    "similarity_norm", SimilarityNorm, ("similarity_norm_seen", "similarity_norm"),
    encode=lambda ev, c: (_r(ev.value),),
    to_json=lambda ev: {"similarity_norm": _r(ev.value), "background": _r(ev.background)},
    from_json=lambda raw: None if _num(raw, "similarity_norm") is None
    else SimilarityNorm(_num(raw, "similarity_norm"), _num(raw, "background") or 0.0),
    collected=lambda opts, searchers: any(s.bias for s in searchers),  # an index built with a background bank
))

register(Signal(
    "geometry", Geometry, ("geometry_seen", "log_inliers", "coverage", "verified"),
    # inliers grow with the mark's detail: their logarithm keeps a 200-inlier copy from swamping every other signal
    encode=lambda ev, c: (math.log1p(int(ev.inliers)), _r(ev.coverage), float(ev.verified)),
    to_json=lambda ev: {"inliers": int(ev.inliers), "coverage": _r(ev.coverage), "verified": bool(ev.verified)}
    | ({} if ev.outline is None else {"outline": [[round(float(x), 1), round(float(y), 1)] for x, y in ev.outline]})
    | ({"mirrored": True} if ev.mirrored else {}),
    from_json=lambda raw: None if _num(raw, "inliers", int) is None
    else Geometry(_num(raw, "inliers", int), _num(raw, "coverage") or 0.0, bool(raw.get("verified", False)), _outline(raw.get("outline")),
                  raw.get("mirrored") is True),
    collected=lambda opts, searchers: bool(opts.verify),
    producer="markguard.infer.verify:VerifyStage", per_index=True,
))


def _outline(v) -> tuple[tuple[float, float], ...] | None:
    if v is None:
        return None
    if (not isinstance(v, list) or len(v) != 4 or any(not isinstance(p, list) or len(p) != 2 for p in v)
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for p in v for x in p)):
        raise MarkguardError(f"evidence 'outline' is {v!r}, not four [x, y] points")
    return tuple((float(x), float(y)) for x, y in v)


def _text_encode(ev: Text, c: Candidate) -> tuple[float, ...]:
    """(read, names this brand, names another brand): the strength of a naming falls with its edits."""
    if ev.text is None:
        return (0.0, 0.0, 0.0)
    strength = 1.0 / (1.0 + (ev.distance or 0)) if ev.brand is not None else 0.0
    return (1.0, strength if ev.brand == c.brand else 0.0, strength if ev.brand not in (None, c.brand) else 0.0)


def _text_json(ev: Text) -> dict:
    out = {"text": ev.text}
    if ev.brand is not None:
        out |= {"text_brand": ev.brand, "text_distance": ev.distance}
    if ev.reason is not None:
        out["text_error"] = ev.reason
    return out


def _text_from_json(raw: dict) -> Text | None:
    if "text" not in raw and "text_error" not in raw:
        return None
    text = raw.get("text")
    if text is not None and not isinstance(text, str):
        raise MarkguardError(f"evidence 'text' is {text!r}, not a string")
    return Text(text, raw.get("text_brand"), None, _num(raw, "text_distance", int), raw.get("text_error"))


register(Signal("text", Text, ("text_seen", "text_read", "text_same_brand", "text_other_brand"),
                encode=_text_encode, to_json=_text_json, from_json=_text_from_json,
                collected=lambda opts, searchers: bool(opts.ocr),
                producer="markguard.infer.stages:TextStage"))


# --------------------------------------------------------------------------- producing evidence

def normalised_similarity(similarity: float, bias: float) -> SimilarityNorm:
    """Evidence from the background bank (``infer/bank.py``): the similarity over the reference's ``bias``
    (its mean similarity to its nearest mark-free regions), as ``bank.normalise`` scores it."""
    from markguard.infer.bank import normalise

    return SimilarityNorm(float(normalise(similarity, bias)), float(bias))


def geometry(verification, reference_points: int, outline=None, *, mirrored: bool = False) -> Geometry:
    """Evidence from an ``infer.verify.Verification`` of a reference with ``reference_points`` keypoints; ``outline``: its
    projected corners in the photo's pixels; ``mirrored``: verified against the mark's mirror image."""
    return Geometry(int(verification.inliers), min(1.0, verification.inliers / max(1, reference_points)), bool(verification.verified),
                    None if outline is None else tuple((float(x), float(y)) for x, y in outline), bool(mirrored))


def attach(match, name: str, record) -> None:
    """Add a signal's record to a ``results.Match``'s evidence, in its results.jsonl form (what calibration will read back)."""
    match.evidence = {**(match.evidence or {}), **SIGNALS[name].to_json(record)}


def text_evidence(read, lexicon) -> Text:
    """Evidence from an ``infer.ocr.OcrRead``: the read text and the brand it names best (``infer.textmatch.Lexicon``)."""
    if read.text is None:
        return Text(None, reason=read.reason)
    m = lexicon.best(read.text)
    return Text(read.text, m.brand if m else None, m.alias if m else None, m.distance if m else None)


def add_text_candidates(candidates: list[Candidate], text: Text, box: list[int] | None) -> list[Candidate]:
    """Give every candidate the photo's text evidence, and add a candidate for a brand the text names that no region matched:
    text can find a wordmark the embedding missed."""
    out = [replace(c, evidence={**c.evidence, "text": text}) for c in candidates]
    if text.brand is not None and all(c.brand != text.brand for c in out):
        out.append(Candidate(text.brand, None, box, {"text": text}))
    return out


# --------------------------------------------------------------------------- the scan's evidence stage

def _priority(c: Candidate) -> float:
    """What orders a candidate's region for reading: its similarity (-1 for one only text found)."""
    sim = c.record("similarity")
    return sim.value if sim is not None else -1.0


def as_candidate(m) -> Candidate:
    """A scan's candidate as it is, or a ``results.Match`` (read back from results.jsonl) with its evidence typed."""
    if isinstance(m, Candidate):
        return m
    raw = m.evidence or {}
    evidence = {name: ev for name, sig in SIGNALS.items() if (ev := sig.from_json(raw)) is not None}
    return Candidate(m.brand, m.mark, m.box, evidence, m.probability, m.index, float(m.score))


def collect(photos: list, matches: list[list], *, lexicon=None, reader=None, combiner=None,
            verified: list[list[Geometry | None]] | None = None, read_unmatched: bool = True) -> list[list[Candidate]]:
    """Each photo's matches (``Candidate``s of a scan, or ``results.Match``es read back; boxes in the pixels of
    ``photos[i]``) as candidates with their evidence, each with its similarity as a record of its own.

    With an OCR ``reader`` and a ``lexicon``: with ``where="text"`` (the default) every photo is read
    where its text detector finds text (:func:`read_photos`), whatever its matches; with
    ``"candidates"``, its best candidates' regions (or the whole photo, last, for one no region
    matched, with ``read_unmatched``); with ``"photo"`` the whole photo. The budget is per photo,
    so a photo's evidence never depends on its batch. The text read becomes each candidate's text
    evidence, and a brand it names that no region matched becomes a candidate of its own.
    ``verified[i][j]`` is the geometric evidence for match j of photo i, if it was checked (see
    :func:`geometry`). With a ``combiner``, each candidate gets its probability.
    """
    out = []
    for i, found in enumerate(matches):
        cands = []
        for j, m in enumerate(found):
            c = as_candidate(m).with_similarity()
            g = verified[i][j] if verified is not None else None
            if g is not None:
                c = replace(c, evidence={**c.evidence, "geometry": g})
            cands.append(c)
        out.append(cands)
    if reader is not None and lexicon is not None and reader.config.where == "text":
        for i, reads in enumerate(read_photos(photos, reader, lexicon, len(out))):
            out[i] = with_text(out[i], reads)
    elif reader is not None and lexicon is not None:
        requests = []
        for i, cands in enumerate(out):
            if cands and reader.config.where == "photo":
                requests.append(OcrRequest(i, None, max(_priority(c) for c in cands)))
                continue
            boxed = [c for c in cands if c.box is not None]
            requests += [OcrRequest(i, tuple(c.box), _priority(c)) for c in boxed]
            if not cands and read_unmatched:
                requests.append(OcrRequest(i, None, -2.0))  # below any similarity: read only when the budget has room
        reads = reader.read_batch(photos, requests)
        by_photo: dict[int, list] = {}
        for r in requests:
            by_photo.setdefault(r.photo, []).append((r, reads[r]))
        for i, pairs in by_photo.items():
            texts = [(r, text_evidence(read, lexicon), read) for r, read in pairs]
            # what decides: a read naming a brand, else any text read, else why nothing was read
            r, text, read = min(texts, key=lambda t: (t[1].brand is None, t[1].text is None, -t[0].priority))
            box = r.box if r.box is not None else read.box  # a whole-photo read: the crop it read
            out[i] = add_text_candidates(out[i], text, [int(round(v)) for v in box] if box is not None else None)
    if combiner is not None:
        out = [combiner.apply(c) for c in out]
    return out


# --------------------------------------------------------------------------- a photo's reads as evidence of its candidates

def _overlap(a, b) -> float:
    """Share of box ``b`` (a read's) inside box ``a`` (a candidate's); 0 when either is None."""
    if a is None or b is None:
        return 0.0
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    area = max(1e-9, (b[2] - b[0]) * (b[3] - b[1]))
    return max(0.0, w) * max(0.0, h) / area


AT = 0.3  # a read is "at" a candidate's region when this share of its box lies inside the region


def text_for(candidate, reads: list[tuple], why: str | None = None):
    """The text evidence of one candidate from a photo's reads (``infer.ocr.OcrRead`` and its :func:`text_evidence`):
    a read anywhere in the photo naming the candidate's brand; else one at its region naming another brand (a veto);
    else text read at its region naming nothing; else "read, no text here" (``text`` None, no reason)."""
    named = [t for _, t in reads if t.brand == candidate.brand]
    if named:
        return min(named, key=lambda t: t.distance or 0)
    at = [(r, t) for r, t in reads if t.text is not None and (candidate.box is None or _overlap(candidate.box, r.box) >= AT)]
    other = [t for _, t in at if t.brand is not None]
    if other:
        return min(other, key=lambda t: t.distance or 0)
    if at:
        return Text(" ".join(t.text for _, t in at))
    return Text(None, reason=why)


def read_photos(photos, reader, lexicon, n: int) -> list[list[tuple]]:
    """Each of the first ``n`` photos read where its text is (``OcrReader.read_text``): its reads and their evidence; one
    read with a reason when the photo could not be read."""
    from markguard.errors import DecodeError
    from markguard.infer.ocr import OcrRead

    out = []
    for i in range(n):
        try:
            image = photos[i]
        except DecodeError as e:
            out.append([(OcrRead(None, None, reason=f"not read: {e.reason}"), Text(None, reason=f"not read: {e.reason}"))])
            continue
        factor = photos.factor(i) if hasattr(photos, "factor") else (1.0, 1.0)
        reads = reader.read_text(image, factor)
        out.append([(r, text_evidence(r, lexicon)) for r in reads])
    return out


def with_text(cands: list, reads: list[tuple]) -> list:
    """A photo's candidates with their text evidence (:func:`text_for`), and a candidate of its own for each brand a read
    names that no candidate is of: text finds a wordmark the embedding missed (mark None, the read's box)."""
    failed = [r.reason for r, _ in reads if r.reason is not None]
    why = failed[0] if failed else None
    out = [replace(c, evidence={**c.evidence, "text": text_for(c, reads, why)}) for c in cands]  # score, index kept
    for r, t in sorted(reads, key=lambda rt: (rt[1].distance or 0)):
        if t.brand is not None and all(c.brand != t.brand for c in out):
            out.append(Candidate(t.brand, None, list(r.box) if r.box is not None else None, {"text": t}))
    return out
