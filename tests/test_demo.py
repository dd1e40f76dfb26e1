"""`markguard demo`: the whole loop (synth → train → index → scan → report → score) on tiny data."""

import json

from markguard.cli import main
from markguard.demo import run_demo
from markguard.infer.results import ROW_KEYS


def test_demo_runs_the_loop_and_scores_it(tmp_path, tiny_overrides):
    r = run_demo(tmp_path / "demo", steps=3, listings=10, brands=3, overrides=tiny_overrides, log=lambda s: None)
    rows = [json.loads(line) for line in open(r["results"])]
    assert len(rows) == 10 and all(tuple(row) == ROW_KEYS for row in rows)
    assert [row["listing_id"] for row in rows] == [f"L{i:05d}" for i in range(10)]
    assert all(row["seller_id"] for row in rows)  # the manifest's sellers are carried through
    score = r["score"]
    assert score["listings"] == 10 and 0 <= score["precision"] <= 1 and 0 <= score["recall"] <= 1
    assert (tmp_path / "demo" / "scan" / "report.html").exists()
    assert json.loads((tmp_path / "demo" / "demo.json").read_text())["counts"] == r["counts"]


def test_demo_refuses_a_used_folder(tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "used")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err
