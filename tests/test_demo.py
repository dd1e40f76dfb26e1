"""The whole loop end to end on tiny data: synth → train → index → scan → report, through the CLI too."""

import json

from markguard.cli import main
from markguard.demo import run_demo
from markguard.infer.writer import ROW_KEYS


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


def test_cli_subcommands_end_to_end(tiny_world, tmp_path, capsys):
    w = tiny_world
    out = tmp_path / "scan"
    assert main(["scan", str(w["manifest"]), "-i", str(w["index"]), "-o", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in open(out / "results.jsonl")]
    assert len(rows) == 12
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["fingerprint"] == w["card"].fingerprint and sum(summary["counts"].values()) == 12
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").exists()
    assert main(["index", "info", str(w["index"])]) == 0
    assert '"ntotal": 6' in capsys.readouterr().out


def test_cli_scan_options_reach_the_pipeline(tiny_world, tmp_path, capsys):
    w = tiny_world
    # a model without a proposal head cannot scan with learned regions: one line, exit 2
    assert main(["scan", str(w["manifest"]), "-i", str(w["index"]), "-o", str(tmp_path / "a"), "--regions", "learned", "--quiet"]) == 2
    assert "no proposal head" in capsys.readouterr().err
    out = tmp_path / "b"
    assert main(["scan", str(w["manifest"]), "-i", str(w["index"]), "-o", str(out), "--verify", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["verify"] is True and summary["stage_seconds"]["verify"] > 0
    for row in map(json.loads, open(out / "results.jsonl")):
        if row["box"]:
            assert 0 <= row["box"][0] < row["box"][2] and 0 <= row["box"][1] < row["box"][3]
    # the ONNX backend scores like PyTorch
    export = tmp_path / "model"
    import shutil

    shutil.copytree(w["model"], export)
    assert main(["export", "--format", "onnx", "--model", str(export)]) == 0
    onnx_out = tmp_path / "c"
    assert main(["scan", str(w["manifest"]), "-i", str(w["index"]), "-m", str(export), "-o", str(onnx_out), "--backend", "onnx", "--quiet"]) == 0
    torch_out = tmp_path / "d"
    assert main(["scan", str(w["manifest"]), "-i", str(w["index"]), "-m", str(export), "-o", str(torch_out), "--quiet"]) == 0
    torch_rows = [json.loads(line)["score"] for line in open(torch_out / "results.jsonl")]
    onnx_rows = [json.loads(line)["score"] for line in open(onnx_out / "results.jsonl")]
    assert len(onnx_rows) == len(torch_rows) == 12
    assert max(abs(a - b) for a, b in zip(onnx_rows, torch_rows)) < 1e-3
