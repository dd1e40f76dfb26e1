"""Messages that name what exists, and no traceback for an expected event (issue 25)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from markguard.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _one_line(capsys, *words) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in captured.err + captured.out
    assert len(err.splitlines()) == 1 and err.startswith("markguard "), err
    for w in words:
        assert w in err, err
    return err


def test_no_message_cites_a_design_document_the_project_does_not_ship():
    assert not (ROOT / "DESIGN.md").exists()
    for folder in ("markguard", "datasets", "infer", "train", "docs"):
        for p in (ROOT / folder).rglob("*"):
            if p.suffix in (".py", ".md", ".yaml", ".js", ".html"):
                assert "DESIGN.md" not in p.read_text(encoding="utf-8"), p


def test_no_message_names_a_threshold_option_that_does_not_exist():
    import re

    for folder in ("markguard", "datasets", "infer", "train"):
        for p in (ROOT / folder).rglob("*.py"):
            found = re.findall(r"--(?:flag|review)(?![-\w])", p.read_text(encoding="utf-8"))
            assert not found, f"{p} names {found[0]}; the options are --flag-threshold and --review-threshold"


def test_a_resume_refusal_names_the_threshold_options_that_exist():
    from markguard.infer.outdir import differences

    said = " ".join(differences({"options": {"flag": 0.9, "review": 0.8}}, {"options": {"flag": 0.5, "review": 0.4}}))
    assert "--flag-threshold" in said and "--review-threshold" in said
    assert "--flag " not in said and "--review " not in said


def test_a_subcommand_mistake_shows_the_subcommands_usage(tmp_path, capsys):
    for argv, usage in ((["report", str(tmp_path), "--bogus"], "usage: markguard report"),
                        (["index", "build", str(tmp_path), "-o", str(tmp_path / "i"), "--bogus"], "usage: markguard index build")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(usage) and "unrecognized arguments: --bogus" in err, err


def test_invalid_brands_yaml_and_recipe_are_one_bounded_line(tmp_path, capsys):
    g = tmp_path / "g"
    (g / "acme").mkdir(parents=True)
    (g / "acme" / "logo.png").write_bytes((ROOT / "markguard/demo_data/gallery/docker/docker.png").read_bytes())
    (g / "brands.yaml").write_text("brands:\n  acme:\n    name: [unclosed\n" + "x" * 5000 + "\n")
    assert main(["gallery", "check", str(g)]) == 2
    err = _one_line(capsys, f"{g / 'brands.yaml'}:", "not valid YAML", "docs/contracts.md")
    assert len(err) < 400
    (tmp_path / "bad.yaml").write_text("steps: 10\nlr: [1,\n  2\nbatch_size: {\n")
    assert main(["train", "-r", str(tmp_path / "bad.yaml"), "-o", str(tmp_path / "run")]) == 2
    err = _one_line(capsys, f"{tmp_path / 'bad.yaml'}:", "not valid YAML")
    assert len(err) < 400


def test_the_yaml_helper_bounds_what_it_quotes():
    import yaml

    from markguard.config import yaml_error

    try:
        yaml.safe_load("a: b\n" + "c: [" + "d, " * 10000 + "\n: :\n")
    except yaml.YAMLError as e:
        line = yaml_error("x.yaml", e)
    assert "\n" not in line and len(line) < 300 and line.startswith("x.yaml:")


def test_scan_out_that_cannot_be_a_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out, words in ((tmp_path / "file" / "out", ["is a file"]), (Path("/proc/markguard-x"), ["cannot make a folder"])):
        assert main(["scan", str(tmp_path), "-i", str(tmp_path), "-o", str(out)]) == 2
        _one_line(capsys, str(out), *words)


def test_ray_address_with_nothing_listening_is_one_line_quickly(tmp_path, capsys):
    import time

    t = time.monotonic()
    assert main(["scan", str(tmp_path), "-i", str(tmp_path), "-o", str(tmp_path / "o"), "--engine", "ray", "--address", "127.0.0.1:1"]) == 2
    assert time.monotonic() - t < 10
    _one_line(capsys, "--address 127.0.0.1:1", "no Ray cluster", "ray start --head")


def test_report_on_an_interrupted_scan_names_resume(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl.partial").write_text("")
    (out / "scan.json").write_text(json.dumps({"input": "/d/dump", "indexes": [{"path": "/i/idx"}]}))
    assert main(["report", str(out)]) == 2
    _one_line(capsys, "did not finish", f"markguard scan /d/dump -i /i/idx -o {out} --resume")


def test_export_refusals_are_one_line_and_leave_no_temp_file(tiny_world, tmp_path, capsys):
    folder = tmp_path / "exports"
    folder.mkdir()
    assert main(["export", "-f", "torchscript", "-m", str(tiny_world["model"]), "--out", str(folder)]) == 2
    _one_line(capsys, "is a folder")
    assert list(folder.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["exports"]
    for opt in (["--tolerance", "nan"], ["--min-cosine", "nan"], ["--tolerance", "-1"]):
        assert main(["export", "-f", "onnx", "-m", str(tiny_world["model"]), "--out", str(tmp_path / "m.onnx"), *opt]) == 2
        _one_line(capsys, opt[0])


def test_export_interrupted_leaves_no_temp_file(tiny_world, tmp_path, monkeypatch):
    import torch

    from markguard.train import export

    def broken(*a, **k):
        Path(a[1]).write_bytes(b"x" * 1000)  # a half-written file, as a full disk or a kill leaves it
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.jit, "save", broken)
    with pytest.raises(OSError):
        export.export_model(tiny_world["model"], "torchscript", tmp_path / "m.pt", check=False)
    assert list(tmp_path.iterdir()) == []


def test_a_closed_pipe_ends_quietly(tiny_world):
    proc = subprocess.Popen([sys.executable, "-m", "markguard.cli", "index", "info", str(tiny_world["index"])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # `| head` that has read enough: the reader is gone before markguard writes
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 141


def test_a_resumed_scans_progress_counts_the_flags_its_summary_counts(tiny_world, tmp_path):
    from markguard.infer.options import ScanOptions
    from markguard.infer.results import PARTIAL, RESULTS, SUMMARY
    from markguard.infer.scan import run_scan

    opts = ScanOptions(batch_size=2, workers=0, device="cpu", flag=-1.0, review=-1.0, verify=False)  # every photo flagged
    out = tmp_path / "out"
    full = run_scan(tiny_world["manifest"], [tiny_world["index"]], out, opts=opts, progress=False)
    rows = (out / RESULTS).read_text().splitlines(keepends=True)
    (out / RESULTS).unlink()
    (out / SUMMARY).unlink()
    (out / PARTIAL).write_text("".join(rows[: len(rows) // 2]))  # killed halfway
    log = io.StringIO()
    summary = run_scan(tiny_world["manifest"], [tiny_world["index"]], out, opts=opts, resume=True, progress_stream=log, progress_every_s=0)
    assert summary["counts"]["flag"] == full["counts"]["flag"] > 0
    assert log.getvalue().strip().splitlines()[-1].endswith(f"flagged {summary['counts']['flag']}")


@pytest.mark.slow
def test_tiles_with_the_shipped_model_names_looks_0(tmp_path, capsys):
    from markguard.demo import DEMO_DATA

    g = tmp_path / "g"
    shutil.copytree(DEMO_DATA / "gallery" / "docker", g / "docker")
    shutil.copytree(DEMO_DATA / "gallery" / "slack", g / "slack")
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(DEMO_DATA / "listings" / "copy-00.jpg", photos)
    assert main(["index", "build", str(g), "-o", str(tmp_path / "idx"), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["scan", str(photos), "-i", str(tmp_path / "idx"), "-o", str(tmp_path / "out"), "--regions", "tiles",
                 "--device", "cpu", "--no-verify", "--quiet"]) == 2
    _one_line(capsys, "--regions tiles", "--looks 0")
