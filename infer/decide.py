"""Decide: each photo's status from its matches — thresholds (global, per brand, or on the combiner's probability), the review band, the seller allowlist — as result rows.

Every check counts both ways, with or without a combiner (:meth:`Policy.value`): a candidate whose
keypoint verification failed scores below what it would have scored unchecked (with a combiner,
its probability had it never been checked; on similarity, one review band lower); one at whose region OCR read another registered brand's
name is vetoed (below review: that brand's own candidate speaks instead); a read naming the
candidate's brand flags it on its own, above a shape match that only the similarity supports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from markguard.errors import MarkguardError
from markguard.infer.results import Match, ScanRow

VETO_MARGIN = 1e-4  # how far below a threshold (or below unchecked) a check that failed puts a candidate
TEXT_STRENGTH = 0.5  # a candidate whose name was read scores at least this far from the flag threshold to 1


@dataclass
class Policy:
    """``flag`` and ``review`` similarities; a brand's own flag threshold shifts its review one by the same band.

    With a ``combiner`` (infer/combine.py), ``flag`` and ``review`` are on its probability instead, the same
    for every brand and index it scores (a per-brand similarity means nothing on a probability). It scores the
    matches of the indexes its model built (``combined``); another model's index in the same scan (a product index
    beside a logo one) is judged on its own model's similarity thresholds (``per_index``), as without a combiner.
    """

    flag: float
    review: float
    per_brand: dict[str, float] = field(default_factory=dict)
    authorized: dict[str, list[str]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # where each threshold came from, for summary.json
    # Scores of different models are not comparable: an index built with its own model brings its own
    # calibrated (flag, review); its name → {"flag": .., "review": ..}. Empty when one model serves all.
    per_index: dict[str, dict[str, float]] = field(default_factory=dict)
    combiner: object | None = None  # an infer.combine.Combiner; loaded and checked once, before the scan
    evidence_rules: bool = True  # checks count both ways (module docstring); off only to measure a signal alone
    combined: frozenset[str] | None = None  # the indexes whose matches the combiner scores; None: every index

    def __post_init__(self):
        own = []
        if self.combiner is not None:
            if not 0.0 <= self.review <= self.flag <= 1.0:
                raise MarkguardError(f"probability thresholds review {self.review} and flag {self.flag} must satisfy "
                                     "0 <= review <= flag <= 1 (with a combiner the thresholds are on its probability; scan with --no-combiner for similarities)")
        else:
            own = [("", (self.flag, self.review))]
        for name, (flag, review) in own + [(n, (t["flag"], t["review"])) for n, t in self.per_index.items()]:
            if review > flag:
                where = f" of index {name}" if name else ""
                raise MarkguardError(f"review threshold {review}{where} is above the flag threshold {flag}; the review band lies below flag")

    def combines(self, index: str | None) -> bool:
        """Whether the combiner scores the matches of ``index``."""
        return self.combiner is not None and (self.combined is None or index in self.combined)

    def base(self, m) -> float:
        """The match's probability with a combiner, else its similarity score — raw where a background bank normalised
        it: the card's and brands.yaml's thresholds are raw similarities, so an index with a bank is judged as one without."""
        if self.combines(getattr(m, "index", None)):
            return m.probability if m.probability is not None else 0.0
        ev = _evidence(m)
        sim, norm = ev.get("similarity"), ev.get("similarity_norm")
        if m.mark is None or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (sim, norm)) or norm >= 1:
            return m.score
        # verification moved the normalised score toward 1 by its strength g (infer/verify.py rescore): the raw one alike
        g = max(0.0, (m.score - norm) / (1.0 - norm))
        return sim + (1.0 - sim) * g

    def value(self, m) -> float:
        """What the thresholds apply to: :meth:`base`, moved by the checks made of the match (module docstring).
        With a combiner, ``m.unchecked`` (set by :func:`decide_rows`) is its probability had it never been checked."""
        decided = getattr(m, "decided", None)
        if decided is not None:  # settled once by decide_rows (a combiner's probability, written as it decided)
            return decided
        v = self.base(m)
        if not self.evidence_rules:
            return v
        ev = _evidence(m)
        flag, review = self.thresholds(m.brand, getattr(m, "index", None))
        text_brand = ev.get("text_brand")
        if text_brand is not None and text_brand == m.brand:
            # its name read in the photo: flags on its own, and outranks a shape match only the similarity supports
            return max(v, flag + (1.0 - flag) * TEXT_STRENGTH)
        unchecked = getattr(m, "unchecked", None)
        unchecked = v if unchecked is None else unchecked
        if text_brand is not None and m.mark is not None:
            v = min(v, unchecked, review) - VETO_MARGIN  # another brand's name read at its region: vetoed
        if ev.get("inliers") is not None and ev.get("verified") is False:
            # checked and not found: below the same candidate unchecked (a combiner's fit says how far; on similarity, a band)
            band = 0.0 if self.combines(getattr(m, "index", None)) else (flag - review)
            v = min(v, unchecked) - max(band, VETO_MARGIN)
        return v

    def thresholds(self, brand: str, index: str | None = None) -> tuple[float, float]:
        """(flag, review) for a match of ``brand`` found in ``index``; a brand's own flag keeps the review band's width."""
        if self.combines(index):
            return self.flag, self.review
        base = self.per_index.get(index) if index is not None else None
        g_flag, g_review = (base["flag"], base["review"]) if base else (self.flag, self.review)
        flag = self.per_brand.get(brand, g_flag)
        return flag, flag - (g_flag - g_review)

    def decide(self, matches: list, seller_id: str | None) -> tuple[str, object | None]:
        """Status of a photo and the match that decided it (the best one when it passes); ``matches`` are
        ``Match``es, or with a combiner anything with a ``brand``, an ``index`` and a ``probability``."""
        ranked = sorted(matches, key=lambda m: -self.value(m))
        allowed = None
        for level in ("flag", "review"):
            for m in ranked:
                flag, review = self.thresholds(m.brand, m.index)
                if self.value(m) >= (flag if level == "flag" else review):
                    if seller_id is not None and seller_id in self.authorized.get(m.brand, ()):
                        allowed = allowed or m
                        continue
                    return level, m
        if allowed is not None:
            return "allowed", allowed
        return "pass", ranked[0] if ranked else None

    def to_json(self) -> dict:
        d = asdict(replace(self, combiner=None, combined=None))
        del d["combiner"], d["combined"]
        if self.combined is not None:
            d["combined_indexes"] = sorted(self.combined)
        if self.combiner is not None:  # what the thresholds are on, and a digest that changes with any refit
            d["on"] = "probability"
            d["combiner"] = self.combiner.summary()
        return d


THRESHOLDS_FILE = "thresholds.json"  # `markguard calibrate` on a user's labelled scan: beside their index, or in a folder they name
THRESHOLDS_FORMAT = "markguard-thresholds"


def save_thresholds(path, thresholds: dict, *, model_fingerprint: str, fitted: dict) -> Path:
    """Write calibrated similarity thresholds (``flag``, ``review``, ``per_brand``) for one model; a folder means its thresholds.json."""
    import json

    from markguard.fsio import atomic_write_text

    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / THRESHOLDS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": THRESHOLDS_FORMAT, "model_fingerprint": model_fingerprint, **thresholds, "fitted": fitted}
    atomic_write_text(path, json.dumps(doc, indent=2))
    return path


def index_thresholds(searcher) -> dict:
    """The similarity thresholds a scan with this index applies: its own thresholds.json (``markguard calibrate``) when it
    has one, checked against its model, else the model card's."""
    import json
    import math

    path = Path(searcher.path) / THRESHOLDS_FILE
    if not path.is_file():
        return searcher.card.thresholds
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise MarkguardError(f"{path}: not a thresholds file ({type(e).__name__}); recalibrate with `markguard calibrate` or remove it") from None
    ok = (isinstance(doc, dict) and doc.get("format") == THRESHOLDS_FORMAT
          and all(isinstance(doc.get(k), (int, float)) and not isinstance(doc.get(k), bool) and math.isfinite(doc[k]) and -1 <= doc[k] <= 1.001
                  for k in ("flag", "review"))
          and isinstance(doc.get("per_brand", {}), dict)
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in doc.get("per_brand", {}).values()))
    if not ok:
        raise MarkguardError(f"{path}: not a thresholds file (needs format {THRESHOLDS_FORMAT!r} and similarities flag, review, per_brand); "
                             "recalibrate with `markguard calibrate` or remove it")
    if doc.get("model_fingerprint") != searcher.card.fingerprint:
        raise MarkguardError(f"{path}: calibrated for model {doc.get('model_fingerprint')}, not this model ({searcher.card.fingerprint}); "
                             "recalibrate with `markguard calibrate` on a scan by this model, or remove it")
    return {"flag": float(doc["flag"]), "review": float(doc["review"]), "per_brand": dict(doc.get("per_brand") or {}),
            "source": str(path)}


def _evidence(m) -> dict:
    """A match's evidence as results.jsonl holds it (the numbers the rules were written for): a scan's candidate's typed
    records in their JSON form, a ``results.Match``'s as read."""
    to_json = getattr(m, "evidence_json", None)
    return to_json() if to_json is not None else (getattr(m, "evidence", None) or {})


def resolve_policy(card_thresholds: dict, brands: dict[str, dict], *, flag: float | None = None,
                   review: float | None = None, per_index_cards: dict[str, dict] | None = None, combiner=None,
                   combined: frozenset[str] | None = None) -> Policy:
    """Command line > model card (calibrated) for the global thresholds; brands.yaml > calibrated per brand.
    With a ``combiner``: command line > the combiner's probability thresholds; the allowlist as always. With a combiner
    that scores only the indexes ``combined``, the others keep their model's card thresholds (``per_index_cards``)."""
    authorized = {b: list(meta.get("authorized_sellers") or []) for b, meta in brands.items() if meta.get("authorized_sellers")}
    if combiner is not None:
        from markguard.infer.combine import FLAG_PROBABILITY, REVIEW_PROBABILITY

        own = combiner.thresholds or {}  # chosen with the combiner at stated operating points (benchmarks/fit_defaults.py)
        p_flag = flag if flag is not None else float(own.get("flag", FLAG_PROBABILITY))
        p_review = review if review is not None else min(float(own.get("review", REVIEW_PROBABILITY)), p_flag)
        src = "the combiner's file" if own else "combiner default"
        sources = {"flag": "command line" if flag is not None else src,
                   "review": "command line" if review is not None else src,
                   "per_brand": "not applied: the thresholds are on the combiner's probability"}
        others = {}
        if combined is not None:  # another model's index: its own card's similarity thresholds (the command line's are probabilities)
            for name, thr in (per_index_cards or {}).items():
                if name not in combined:
                    i_flag = float(thr.get("flag", 0.6))
                    others[name] = {"flag": i_flag, "review": float(thr.get("review", i_flag - 0.1))}
                    sources[f"index:{name}"] = "its model's card (similarity; the combiner scores the other indexes)"
        return Policy(p_flag, p_review, {}, authorized, sources, others, combiner, combined=combined)
    where = card_thresholds.get("source") or "model card"  # an index's thresholds.json names itself
    sources = {"flag": "command line" if flag is not None else where,
               "review": "command line" if review is not None else where}
    g_flag = flag if flag is not None else float(card_thresholds.get("flag", 0.6))
    g_review = review if review is not None else float(card_thresholds.get("review", g_flag - 0.1))
    if flag is not None and review is None:
        g_review = g_flag - (float(card_thresholds.get("flag", 0.6)) - float(card_thresholds.get("review", 0.5)))
        sources["review"] = "command line flag minus the card's review band"
    per_brand = {b: float(t) for b, t in (card_thresholds.get("per_brand") or {}).items()}
    for b in per_brand:
        sources[f"brand:{b}"] = f"{where} (calibrated)"
    for b, meta in brands.items():
        if meta.get("threshold") is not None:
            per_brand[b] = float(meta["threshold"])
            sources[f"brand:{b}"] = "brands.yaml"
    per_index = {}
    if flag is None and review is None:  # a command-line threshold applies to every index alike
        for name, thr in (per_index_cards or {}).items():
            i_flag = float(thr.get("flag", 0.6))
            per_index[name] = {"flag": i_flag, "review": float(thr.get("review", i_flag - 0.1))}
            sources[f"index:{name}"] = "its model's card"
    return Policy(g_flag, g_review, per_brand, authorized, sources, per_index)


def decide_rows(batch, per_photo: list[list[Match]], policy: Policy, max_matches: int) -> list[ScanRow]:
    """One row per item of ``batch`` (a decoded Batch) in input order; ``per_photo[i]`` holds the matches of its
    i-th decoded photo from every index. Items that failed to read or decode become error rows."""
    rows = []
    ok_pos = {pos: i for i, pos in enumerate(batch.ok)}
    for pos, item in enumerate(batch.items):
        if pos in batch.errors:
            rows.append(ScanRow(item.listing_id, item.image, item.seller_id, "error", None, None, None, None, [], batch.errors[pos]))
            continue
        found = per_photo[ok_pos[pos]]
        if policy.combiner is not None:
            scored = [m for m in found if policy.combines(m.index)]
            for m, u in zip(scored, policy.combiner.score_matches(scored)):
                m.unchecked = u
            for m in scored:  # the probability written is the one that decided
                m.decided = m.probability = min(1.0, max(0.0, policy.value(m)))
        matches = sorted(found, key=lambda m: -policy.value(m))
        status, decider = policy.decide(matches, item.seller_id)
        best = max((m.score for m in matches), default=None)  # the row's score is the best similarity, whatever decided
        shown = [m for m in matches if policy.value(m) >= policy.thresholds(m.brand, m.index)[1]][:max_matches]
        if status == "pass":
            rows.append(ScanRow(item.listing_id, item.image, item.seller_id, "pass", best, None, None, None, shown))
        else:
            rows.append(ScanRow(item.listing_id, item.image, item.seller_id, status, decider.score, decider.brand,
                                decider.mark, decider.box, shown))
    return rows


def policy_for(searchers: list, opts, combiner=None) -> Policy:
    """The policy a scan of these searchers decides by: the first index's thresholds (each its own with several models),
    the brands' settings, the command line's ``--flag-threshold``/``--review-threshold`` and the combiner."""
    brands: dict[str, dict] = {}
    for s in searchers:
        brands.update(s.brands)
    per_index = combined = None
    if len({s.card.fingerprint for s in searchers}) > 1:  # several models: each index is judged by its own calibration
        per_index = {s.name: index_thresholds(s) for s in searchers}
        if combiner is not None:  # the combiner scores its own model's indexes (infer/combine.py load_for_scan checked them)
            combined = frozenset(s.name for s in searchers if s.card.fingerprint == combiner.model_fingerprint)
    lead = next((s for s in searchers if combined is None or s.name in combined), searchers[0])
    return resolve_policy(index_thresholds(lead), brands, flag=opts.flag, review=opts.review, per_index_cards=per_index,
                          combiner=combiner, combined=combined)
