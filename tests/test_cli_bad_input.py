"""Every subcommand with an input it must refuse: exit code 2, one line naming the problem, never a traceback.

The cases are the operator's mistakes found by trying markguard as one would use it (a full disk,
a colleague's model card, a regenerated dump, a typo in a flag). All run in this process on the
tiny scan world: no training.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from markguard.cli import main
from test_cli import SCAN, _scan_tests

_t = _scan_tests()
world, scanned = _t.world, _t.scanned


@pytest.fixture(scope="module")
def bad(world, scanned, tmp_path_factory) -> dict[str, Path]:
    """The hostile files, made once."""
    root = tmp_path_factory.mktemp("bad-input")
    f = {"root": root, "file": root / "a-file.txt"}
    f["file"].write_text("not a folder\n")
    big = root / "big-field.csv"
    big.write_text("listing_id,image_path\nL1," + "a" * (200 * 1024) + "\n")
    f["big_csv"] = big
    parquet = root / "broken.parquet"
    parquet.write_bytes(b"PAR1" + bytes(range(256)) * 8 + b"PAR1")
    f["parquet"] = parquet
    model = root / "model"
    shutil.copytree(world.model, model)
    (model / "model.onnx").write_bytes(b"\x08\x07garbage" * 50)
    (model / "model.torchscript.pt").write_bytes(b"PK\x03\x04 not a zip" * 20)
    (model / "model.int8.onnx").write_bytes(b"\x08\x07garbage" * 50)
    f["model"] = model
    card = json.loads((world.model / "model_card.json").read_text())
    for name, change in {"card_scan0": {"scan_size": 0}, "card_dim": {"dim": "32"}, "card_mode": {"regions": {"mode": "everything"}},
                         "card_mean": {"mean": [0.5]}, "card_thr": {"thresholds": {"flag": "high", "review": 0.5}}}.items():
        shutil.copytree(world.model, root / name)
        (root / name / "model_card.json").write_text(json.dumps(card | change))
        f[name] = root / name
    shards = []
    for i in range(2):
        out = root / f"shard{i}"
        assert main(["scan", str(world.dump), "-i", str(world.index), "-o", str(out), "--shard", f"{i}/2", *SCAN]) == 0
        shards.append(out)
    with open(shards[1] / "results.jsonl", "ab") as fh:
        fh.write(b"\x00\xffgarbage, not a row\n")
    f["shards"] = shards
    (root / "truth.csv").write_text("listing_id,image,marks\nL1,a.jpg,[]\n")
    (root / "truth.bin").write_bytes(bytes(range(256)))
    (root / "empty-gallery").mkdir()
    return f


def _scan(world, bad, *extra, dump=None):
    return ["scan", str(dump or world.dump), "-i", str(world.index), "-o", str(bad["root"] / "never"), *SCAN, *extra]


CASES = {  # id → (argv builder, words the message must hold)
    "scan csv field over 128 KiB": (lambda w, b: _scan(w, b, dump=b["big_csv"]), ["big-field.csv:2", "field limit"]),
    "scan corrupt parquet": (lambda w, b: _scan(w, b, dump=b["parquet"]), ["broken.parquet", "parquet"]),
    "scan --device foo": (lambda w, b: _scan(w, b, "--device", "foo"), ["--device 'foo'"]),
    "scan --compile nosuchbackend": (lambda w, b: _scan(w, b, "--compile", "nosuchbackend"), ["nosuchbackend", "inductor"]),
    "scan --backend torchscript bad file": (lambda w, b: _scan(w, b, "-m", str(b["model"]), "--backend", "torchscript"),
                                            ["model.torchscript.pt", "TorchScript"]),
    "scan --backend onnx bad file": (lambda w, b: _scan(w, b, "-m", str(b["model"]), "--backend", "onnx"), ["model.onnx", "ONNX"]),
    "scan --backend onnx-int8 bad file": (lambda w, b: _scan(w, b, "-m", str(b["model"]), "--backend", "onnx-int8"),
                                          ["model.int8.onnx", "ONNX"]),
    "export onnx-int8 without --calib": (lambda w, b: ["export", "-f", "onnx-int8", "-m", str(b["model"]), "-o", str(b["root"] / "never")],
                                         ["--calib PHOTOS"]),
    "export onnx-int8 --calib missing": (lambda w, b: ["export", "-f", "onnx-int8", "-m", str(b["model"]), "--calib", str(b["root"] / "nope"),
                                                       "-o", str(b["root"] / "never")], ["--calib", "nope: no such file or folder"]),
    "export onnx --calib": (lambda w, b: ["export", "-f", "onnx", "-m", str(b["model"]), "--calib", str(b["root"]), "-o", str(b["root"] / "never")],
                            ["--calib is for --format onnx-int8"]),
    "scan --flag-threshold nan": (lambda w, b: _scan(w, b, "--flag-threshold", "nan"), ["--flag-threshold nan"]),
    "scan --flag-threshold inf": (lambda w, b: _scan(w, b, "--flag-threshold", "inf"), ["--flag-threshold inf"]),
    "scan --review-threshold -inf": (lambda w, b: _scan(w, b, "--review-threshold=-inf"), ["--review-threshold"]),
    "scan card scan_size 0": (lambda w, b: _scan(w, b, "-m", str(b["card_scan0"])), ["'scan_size'"]),
    "scan card dim string": (lambda w, b: _scan(w, b, "-m", str(b["card_dim"])), ["'dim'"]),
    "scan card region mode": (lambda w, b: _scan(w, b, "-m", str(b["card_mode"])), ["card_mode", "fingerprint"]),  # the mode is part of the fingerprint: an edited card is caught first
    "scan card mean length 1": (lambda w, b: _scan(w, b, "-m", str(b["card_mean"])), ["'mean'"]),
    "scan card threshold string": (lambda w, b: _scan(w, b, "-m", str(b["card_thr"])), ["'thresholds'", "flag"]),
    "merge garbage line in a shard": (lambda w, b: ["merge", *map(str, b["shards"]), "-o", str(b["root"] / "merged")],
                                      ["shard1/results.jsonl:", "not a valid result row"]),
    "synth --out FILE": (lambda w, b: ["synth", "--out", str(b["file"])], ["is a file"]),
    "synth --brands 0": (lambda w, b: ["synth", "--out", str(b["root"] / "s"), "--brands", "0"], ["--brands 0"]),
    "synth --marks-per-brand 0": (lambda w, b: ["synth", "--out", str(b["root"] / "s"), "--marks-per-brand", "0"], ["--marks-per-brand 0"]),
    "synth --listings -1": (lambda w, b: ["synth", "--out", str(b["root"] / "s"), "--listings", "-1"], ["--listings -1"]),
    "synth --backgrounds missing": (lambda w, b: ["synth", "--out", str(b["root"] / "s"), "--backgrounds", str(b["root"] / "nope")],
                                    ["nope", "backgrounds folder not found"]),
    "demo --out FILE": (lambda w, b: ["demo", "--out", str(b["file"])], ["is a file"]),
    "demo --steps without --train": (lambda w, b: ["demo", "--out", str(b["root"] / "d"), "--steps", "5"], ["--steps", "--train"]),
    "demo --train --steps 0": (lambda w, b: ["demo", "--out", str(b["root"] / "d"), "--train", "--steps", "0"], ["--steps 0"]),
    "calibrate --truth a CSV": (lambda w, b: ["calibrate", str(_t_scanned(b)), "--truth", str(b["root"] / "truth.csv"),
                                              "-m", str(w.model), "--device", "cpu", "--dry-run"], ["truth.csv", "columns listing_id and brand"]),
    "calibrate --truth binary": (lambda w, b: ["calibrate", str(_t_scanned(b)), "--truth", str(b["root"] / "truth.bin"),
                                               "-m", str(w.model), "--device", "cpu", "--dry-run"], ["truth.bin:1"]),
    "index build --memory-budget-mb -1": (lambda w, b: ["index", "build", str(w.gallery), "-o", str(b["root"] / "i"), "-m", str(w.model),
                                                        "--memory-budget-mb", "-1"], ["--memory-budget-mb -1"]),
    "gallery check --min-similarity 5": (lambda w, b: ["gallery", "check", str(w.gallery), "--min-similarity", "5"], ["--min-similarity 5"]),
    "gallery check --min-similarity nan": (lambda w, b: ["gallery", "check", str(w.gallery), "--min-similarity", "nan"], ["--min-similarity nan"]),
    "gallery check empty folder": (lambda w, b: ["gallery", "check", str(b["root"] / "empty-gallery")], ["no mark images"]),
    "train unknown recipe name": (lambda w, b: ["train", "--recipe", "nosuchrecipe", "--out", str(b["root"] / "t")], ["nosuchrecipe", "demo"]),
}


def _t_scanned(b) -> Path:
    return b["shards"][0]  # a finished scan output (of shard 0) with its summary


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(case, world, bad, capsys):
    build, words = CASES[case]
    capsys.readouterr()
    assert main(build(world, bad)) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in captured.err + captured.out
    assert len(err.splitlines()) == 1 and err.startswith("markguard "), err
    for w in words:
        assert w in err, err
    assert not (bad["root"] / "never").exists()  # a refused scan leaves no folder behind


def test_disk_full_during_a_scan(world, tmp_path, capsys, monkeypatch):
    from markguard.infer.writer import ResultsWriter

    def full(self, rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ResultsWriter, "write", full)
    out = tmp_path / "out"
    assert main(["scan", str(world.dump), "-i", str(world.index), "-o", str(out), *SCAN]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "results.jsonl.partial" in err and "--resume" in err, err


def test_demo_out_named_like_the_recipe_fine_tunes_with_the_shipped_recipe(tmp_path, monkeypatch, capsys):
    """`markguard demo --out demo --train`: a folder named like a recipe does not shadow it; the fine-tune starts from ImageNet."""
    import markguard.train.loop as loop

    seen = {}

    class Reached(Exception):
        pass

    def train(cfg, out, **kwargs):
        seen["cfg"] = cfg
        raise Reached

    monkeypatch.setattr(loop, "train", train)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logo.yaml").write_text("backbone: resnet18\n")
    with pytest.raises(Reached):
        main(["demo", "--out", "logo", "--train", "--steps", "3"])
    cfg = seen["cfg"]
    assert cfg.backbone == "tf_efficientnet_lite0" and cfg.init == "efficientnet-lite0" and cfg.steps == 3
    with pytest.raises(Reached):  # a batch size the user chose is theirs
        main(["demo", "--out", "demo2", "--train", "batch_size=8"])
    assert seen["cfg"].batch_size == 8


@pytest.mark.parametrize("argv, words", [(["report", "out", "--page-size", "0"], "--page-size: must be at least 1"),
                                         (["data", "icons", "--set", "twemoji", "--out", "g", "--size", "x"], "--size: 'x' is not a whole number"),
                                         (["data", "realbench", "--marks", "m", "--photos", "p", "--out", "o", "--brands", "-3"],
                                          "--brands: must be at least 1")])
def test_counts_are_checked_as_the_arguments_are_parsed(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and words in capsys.readouterr().err


def test_without_opencv_verify_is_one_line_and_the_default_scan_says_it_does_not_verify(world, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cv2" else real(name, *a))
    assert main(["scan", str(world.dump), "-i", str(world.index), "-o", str(tmp_path / "v"), "--verify", *SCAN]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'markguard[verify]'" in err and "--no-verify" in err, err
    scan = [a for a in SCAN if a != "--quiet"] + ["--log-every", "1000"]
    assert main(["scan", str(world.dump), "-i", str(world.index), "-o", str(tmp_path / "d"), *scan]) == 0
    err = capsys.readouterr().err
    assert "no geometric verification (OpenCV is not installed" in err
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["options"]["verify"] is False
