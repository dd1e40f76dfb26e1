"""Decide: each photo's status from its matches — thresholds (global, per brand), the review band, the seller allowlist — as result rows."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from markguard.errors import MarkguardError
from markguard.infer.results import Match, ScanRow


@dataclass
class Policy:
    """``flag`` and ``review`` similarities; a brand's own flag threshold shifts its review one by the same band."""

    flag: float
    review: float
    per_brand: dict[str, float] = field(default_factory=dict)
    authorized: dict[str, list[str]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # where each threshold came from, for summary.json
    # Scores of different models are not comparable: an index built with its own model brings its own
    # calibrated (flag, review); its name → {"flag": .., "review": ..}. Empty when one model serves all.
    per_index: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self):
        for name, (flag, review) in [("", (self.flag, self.review))] + [(n, (t["flag"], t["review"])) for n, t in self.per_index.items()]:
            if review > flag:
                where = f" of index {name}" if name else ""
                raise MarkguardError(f"review threshold {review}{where} is above the flag threshold {flag}; the review band lies below flag")

    def thresholds(self, brand: str, index: str | None = None) -> tuple[float, float]:
        """(flag, review) for a match of ``brand`` found in ``index``; a brand's own flag keeps the review band's width."""
        base = self.per_index.get(index) if index is not None else None
        g_flag, g_review = (base["flag"], base["review"]) if base else (self.flag, self.review)
        flag = self.per_brand.get(brand, g_flag)
        return flag, flag - (g_flag - g_review)

    def decide(self, matches: list[Match], seller_id: str | None) -> tuple[str, Match | None]:
        """Status of a photo and the match that decided it (the best one when it passes)."""
        ranked = sorted(matches, key=lambda m: -m.score)
        allowed = None
        for level in ("flag", "review"):
            for m in ranked:
                flag, review = self.thresholds(m.brand, m.index)
                if m.score >= (flag if level == "flag" else review):
                    if seller_id is not None and seller_id in self.authorized.get(m.brand, ()):
                        allowed = allowed or m
                        continue
                    return level, m
        if allowed is not None:
            return "allowed", allowed
        return "pass", ranked[0] if ranked else None

    def to_json(self) -> dict:
        return asdict(self)


def resolve_policy(card_thresholds: dict, brands: dict[str, dict], *, flag: float | None = None,
                   review: float | None = None, per_index_cards: dict[str, dict] | None = None) -> Policy:
    """Command line > model card (calibrated) for the global thresholds; brands.yaml > calibrated per brand."""
    sources = {"flag": "command line" if flag is not None else "model card",
               "review": "command line" if review is not None else "model card"}
    g_flag = flag if flag is not None else float(card_thresholds.get("flag", 0.6))
    g_review = review if review is not None else float(card_thresholds.get("review", g_flag - 0.1))
    if flag is not None and review is None:
        g_review = g_flag - (float(card_thresholds.get("flag", 0.6)) - float(card_thresholds.get("review", 0.5)))
        sources["review"] = "command line flag minus the card's review band"
    per_brand = {b: float(t) for b, t in (card_thresholds.get("per_brand") or {}).items()}
    for b in per_brand:
        sources[f"brand:{b}"] = "model card (calibrated)"
    for b, meta in brands.items():
        if meta.get("threshold") is not None:
            per_brand[b] = float(meta["threshold"])
            sources[f"brand:{b}"] = "brands.yaml"
    authorized = {b: list(meta.get("authorized_sellers") or []) for b, meta in brands.items() if meta.get("authorized_sellers")}
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
        matches = sorted(per_photo[ok_pos[pos]], key=lambda m: -m.score)
        status, decider = policy.decide(matches, item.seller_id)
        best = matches[0].score if matches else None
        shown = [m for m in matches if m.score >= policy.thresholds(m.brand, m.index)[1]][:max_matches]
        if status == "pass":
            rows.append(ScanRow(item.listing_id, item.image, item.seller_id, "pass", best, None, None, None, shown))
        else:
            rows.append(ScanRow(item.listing_id, item.image, item.seller_id, status, decider.score, decider.brand,
                                decider.mark, decider.box, shown))
    return rows
