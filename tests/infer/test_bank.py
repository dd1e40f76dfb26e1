"""Background-bank normalisation: a hub reference loses its head start, an honest match keeps its rank."""

from __future__ import annotations

import numpy as np
import pytest

from markguard.infer.bank import Hub, bank_images, hub_of, normalise, reference_bias


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_bias_matches_brute_force():
    rng = np.random.default_rng(0)
    refs, bank = _unit(rng.normal(size=(7, 16))), _unit(rng.normal(size=(50, 16)))
    got = reference_bias(refs, bank, k=5)
    want = [np.mean(sorted(bank @ r)[-5:]) for r in refs]
    assert np.allclose(got, want, atol=1e-6)
    assert reference_bias(refs, bank[:0]).tolist() == [0.0] * 7


def test_hub_loses_to_true_match():
    """A reference close to all backgrounds (a hub) outscores the true mark on raw similarity, not after normalising."""
    rng = np.random.default_rng(1)
    background = _unit(rng.normal(size=16))
    bank = _unit(background + 0.3 * rng.normal(size=(40, 16)))
    hub = _unit(background + 0.1 * rng.normal(size=16))
    mark = _unit(rng.normal(size=16))
    query = _unit(0.4 * mark + 0.6 * background)  # a photo of the mark on a background
    raw = np.array([query @ hub, query @ mark])
    assert raw[0] > raw[1]
    norm = normalise(raw, reference_bias(np.stack([hub, mark]), bank))
    assert norm[1] > norm[0]
    assert normalise(1.0, 0.7) == pytest.approx(1.0) and normalise(0.7, 0.7) == pytest.approx(0.0)


def test_hub_of():
    hub = hub_of(["a", "a", "b", "a", "c"], top=2)
    assert (hub.photos, hub.reference, hub.count, hub.share, hub.distinct, hub.top) == (5, "a", 3, 0.6, 3, [("a", 3), ("b", 1)])
    assert hub_of([]) == Hub(0, None, 0, None, 0)


def test_bank_images_deterministic():
    a = bank_images(3, 64, seed=2)
    b = bank_images(3, 64, seed=2)
    assert [np.asarray(x).tobytes() for x in a] == [np.asarray(x).tobytes() for x in b]
    assert all(im.size == (64, 64) for im in a)


def test_index_with_bank_scores_normalised(tiny_world, tmp_path):
    """An index built with a bank stores each reference's bias; its scan's scores are the raw ones normalised."""
    import json

    from markguard.infer.build import build_index, read_index_meta
    from markguard.infer.scan import ScanOptions, run_scan

    build_index(tiny_world["gallery"], tmp_path / "bank", model=tiny_world["model"], kind="flat", device="cpu", bank=6)
    meta = read_index_meta(tmp_path / "bank")
    assert meta["bank"]["images"] == 6 and meta["bank"]["regions"] > 6
    bias = {int(k): v for k, v in meta["bank"]["bias"].items()}
    assert len(bias) == 6 and all(-1 <= v <= 1 for v in bias.values())
    opts = ScanOptions(batch_size=4, workers=0, flag=-2.0, review=-2.0)
    run_scan(tiny_world["manifest"], [tiny_world["index"]], tmp_path / "raw", opts=opts, progress=False)
    run_scan(tiny_world["manifest"], [tmp_path / "bank"], tmp_path / "norm", opts=opts, progress=False)
    raw = [json.loads(x) for x in (tmp_path / "raw" / "results.jsonl").read_text().splitlines()]
    norm = [json.loads(x) for x in (tmp_path / "norm" / "results.jsonl").read_text().splitlines()]
    from markguard.infer.index import MarkIndex

    ids = {(r.brand, r.mark): r.id for r in MarkIndex.load(tmp_path / "bank").records()}
    checked = 0
    for a, b in zip(raw, norm):
        by_mark = {(m["brand"], m["mark"]): m["score"] for m in a["matches"]}
        for m in b["matches"]:
            key = (m["brand"], m["mark"])
            if key in by_mark and m["box"] == next(x["box"] for x in a["matches"] if (x["brand"], x["mark"]) == key):
                assert m["score"] == pytest.approx(float(normalise(by_mark[key], bias[ids[key]])), abs=2e-3)
                checked += 1
    assert checked > 0


def test_normalised_scores_stay_on_the_similarity_scale():
    from markguard.infer.bank import normalise

    out = normalise(np.array([-1.0, -0.5, 0.2, 1.0], np.float32), np.array([0.3, 0.9, 0.2, 0.5], np.float32))
    assert out.min() >= -1.0 and out.max() <= 1.0 and out[-1] == 1.0 and out[2] == 0.0
    assert out[1] == -1.0  # (-0.5 - 0.9) / 0.1 = -14 without the clip: below every threshold a user can give
