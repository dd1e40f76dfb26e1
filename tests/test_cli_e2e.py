"""The CLI's subcommands end to end on a tiny world (synth → train → index built once per session):
scan, report, index info, scan options, and an exported ONNX model scanning like PyTorch."""

import json
import shutil

from markguard.cli import main


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
