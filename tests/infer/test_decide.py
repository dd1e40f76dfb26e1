"""The decision policy (thresholds, per-brand review band, allowlist, several brands) and search aggregation vs brute force."""

from __future__ import annotations

import numpy as np
import pytest

from markguard.errors import MarkguardError
from markguard.infer.decide import Match, Policy, resolve_policy
from markguard.infer.search import search_batch


def m(brand, score, mark=None, index=None):
    return Match(brand, mark or f"{brand}-logo", score, [0, 0, 10, 10], index)


def test_global_thresholds_and_review_band():
    p = Policy(flag=0.8, review=0.6)
    assert p.decide([m("acme", 0.85)], None)[0] == "flag"
    assert p.decide([m("acme", 0.8)], None)[0] == "flag"  # at the threshold counts
    assert p.decide([m("acme", 0.7)], None)[0] == "review"
    assert p.decide([m("acme", 0.59)], None) == ("pass", m("acme", 0.59))
    assert p.decide([], "s1") == ("pass", None)


def test_per_brand_threshold_shifts_its_review_band():
    p = Policy(flag=0.8, review=0.6, per_brand={"strict": 0.9, "loose": 0.5})
    assert p.thresholds("strict") == pytest.approx((0.9, 0.7))
    assert p.thresholds("loose") == pytest.approx((0.5, 0.3))
    assert p.decide([m("strict", 0.85)], None)[0] == "review"  # would be a flag for any other brand
    assert p.decide([m("strict", 0.65)], None)[0] == "pass"
    assert p.decide([m("loose", 0.55)], None)[0] == "flag"
    assert p.decide([m("loose", 0.35)], None)[0] == "review"


def test_several_brands_a_flag_beats_a_better_review():
    p = Policy(flag=0.8, review=0.6, per_brand={"strict": 0.95})
    status, by = p.decide([m("strict", 0.9), m("acme", 0.82)], None)
    assert (status, by.brand) == ("flag", "acme")  # strict's 0.9 is only a review, acme's 0.82 a flag
    status, by = p.decide([m("acme", 0.7), m("globex", 0.75)], None)
    assert (status, by.brand) == ("review", "globex")  # the best of several reviews


def test_allowlist_gives_allowed_with_the_match_recorded():
    p = Policy(flag=0.8, review=0.6, authorized={"acme": ["seller-1"]})
    status, by = p.decide([m("acme", 0.95)], "seller-1")
    assert status == "allowed" and by.brand == "acme" and by.score == 0.95
    assert p.decide([m("acme", 0.95)], "seller-2")[0] == "flag"
    assert p.decide([m("acme", 0.95)], None)[0] == "flag"
    # the seller may sell acme, not globex: globex's flag stands
    status, by = p.decide([m("acme", 0.95), m("globex", 0.85)], "seller-1")
    assert (status, by.brand) == ("flag", "globex")
    status, by = p.decide([m("acme", 0.95), m("globex", 0.65)], "seller-1")
    assert (status, by.brand) == ("review", "globex")
    assert p.decide([m("acme", 0.5)], "seller-1")[0] == "pass"  # nothing to allow below review


def test_per_index_thresholds():
    p = Policy(flag=0.8, review=0.6, per_brand={"acme": 0.9}, per_index={"products": {"flag": 0.5, "review": 0.4}})
    assert p.decide([m("globex", 0.55, index="products")], None)[0] == "flag"
    assert p.decide([m("globex", 0.55, index="logos")], None)[0] == "pass"
    assert p.thresholds("acme", "products") == pytest.approx((0.9, 0.8))  # brand override keeps that index's band width


def test_resolve_policy_sources_and_order():
    card = {"flag": 0.7, "review": 0.55, "per_brand": {"acme": 0.75, "globex": 0.8}}
    brands = {"globex": {"threshold": 0.9, "authorized_sellers": ["s9"]}, "initech": {"threshold": None}}
    p = resolve_policy(card, brands)
    assert (p.flag, p.review) == (0.7, 0.55)
    assert p.per_brand == {"acme": 0.75, "globex": 0.9}
    assert p.sources["brand:globex"] == "brands.yaml" and p.sources["brand:acme"] == "model card (calibrated)"
    assert p.authorized == {"globex": ["s9"]}
    q = resolve_policy(card, brands, flag=0.8)
    assert q.flag == 0.8 and q.review == pytest.approx(0.65) and q.sources["flag"] == "command line"
    with pytest.raises(MarkguardError, match="review band lies below flag"):
        resolve_policy(card, {}, flag=0.5, review=0.6)
    assert p.to_json()["per_brand"] == {"acme": 0.75, "globex": 0.9}


class FakeIndex:
    """Exact inner-product search over a few records, the way MarkIndex answers."""

    def __init__(self, vectors, records):
        self.x, self.recs = vectors, records

    def search(self, q, k):
        s = q @ self.x.T
        ids = np.argsort(-s, axis=1)[:, :k]
        return np.take_along_axis(s, ids, 1), ids

    def get(self, ids):
        return [self.recs[i] for i in ids]


class Rec:
    def __init__(self, brand, mark):
        self.brand, self.mark = brand, mark


def test_search_aggregation_matches_brute_force():
    rng = np.random.default_rng(0)
    dim = 16
    refs = rng.normal(size=(9, dim)).astype(np.float32)
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    # marks with several reference images: a mark's match is its best reference over all regions
    recs = [Rec(f"b{i % 3}", f"b{i % 3}-m{i % 2}") for i in range(9)]
    index = FakeIndex(refs, recs)
    counts = [4, 1, 6]
    q = rng.normal(size=(sum(counts), dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    boxes = [rng.uniform(0, 100, size=(n, 4)).astype(np.float32) for n in counts]
    got = search_batch(index, q, counts, boxes, k=len(refs), max_matches=99, index_name="logos")
    start = 0
    for n, b, found in zip(counts, boxes, got):
        sims = q[start : start + n] @ refs.T  # (regions, refs)
        expect = {}
        for r in range(n):
            for j in range(len(refs)):
                key = (recs[j].brand, recs[j].mark)
                if key not in expect or sims[r, j] > expect[key][0]:
                    expect[key] = (sims[r, j], r)
        want = sorted(((k, v) for k, v in expect.items()), key=lambda kv: -kv[1][0])
        assert [(x.brand, x.mark) for x in found] == [k for k, _ in want]
        for x, (_, (score, r)) in zip(found, want):
            assert x.score == pytest.approx(float(score), abs=1e-5)
            assert x.box == [int(round(v)) for v in b[r]]
            assert x.index == "logos"
        start += n
    capped = search_batch(index, q, counts, boxes, k=len(refs), max_matches=2)
    assert [len(c) for c in capped] == [2, 2, 2] and capped[0][0].index is None
    assert search_batch(index, np.zeros((0, dim), np.float32), [0, 0], [np.zeros((0, 4))] * 2) == [[], []]
