"""bench_evidence's real-photo mode on a tiny generated bench: every signal and the cross-fitted combination scored per tier."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_evidence.py"


@pytest.fixture(scope="module")
def bench_evidence():
    spec = importlib.util.spec_from_file_location("bench_evidence", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_real_mode_scores_each_signal_and_the_cross_fitted_combination_per_tier(bench_evidence, tmp_path):
    pytest.importorskip("cv2")
    pytest.importorskip("rapidocr_onnxruntime")
    from markguard.datasets.realbench import TIERS, BenchConfig, build_realbench, write_sample_sources

    src = write_sample_sources(tmp_path / "sources", brands=12, photos=4)
    bench = tmp_path / "bench"
    build_realbench(src["marks"], [src["photos"]], bench, cross_dir=src["cross"], cfg=BenchConfig(brands=6, listings=40))
    before = sorted(p.name for p in (bench / "listings").iterdir())
    res = bench_evidence.real_part(bench, 2, tmp_path / "work", bank=4, ocr_budget=2, model=None)
    assert sorted(p.name for p in (bench / "listings").iterdir()) == before  # the bench's own folder is left as it was
    assert set(res["table"]) == {*bench_evidence.REAL_SIGNALS, "combined probability"}
    assert sum(res["halves"]) == res["listings"] and abs(res["halves"][0] - res["halves"][1]) <= len(TIERS)
    for name, r in res["table"].items():
        assert set(r["tiers"]) <= set(TIERS) and sum(t["n"] for t in r["tiers"].values()) == res["listings"]
        assert all(0.0 <= t["tpr"] <= 1.0 for t in r["tiers"].values()) and r["fpr"] <= 0.5
    # the gate verified from the review threshold the first pass set (reached by 5% of the negatives) less its margin
    assert 0 < res["checked"] < res["candidates"] and res["verify_from"] == pytest.approx(res["review"] - 0.05)
    assert 0 < res["seen"]["verification (inliers)"] <= res["seen"]["similarity"]
    assert res["stage_seconds"]["verify"] > 0 and "evidence" in res["stage_seconds"]
