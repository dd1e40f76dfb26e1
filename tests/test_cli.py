"""`markguard scan` / `merge` / `index` through the CLI: exit codes, one-line errors, shards merged back into one scan."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from markguard.cli import main


def _scan_tests():
    """tests/infer/test_scan.py, the same module object pytest uses when it collects it (its dump and model builders)."""
    if "test_scan" not in sys.modules:
        spec = importlib.util.spec_from_file_location("test_scan", Path(__file__).parent / "infer" / "test_scan.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["test_scan"] = module
        spec.loader.exec_module(module)
    return sys.modules["test_scan"]


_t = _scan_tests()
make_model, read_rows, scanned, world = _t.make_model, _t.read_rows, _t.scanned, _t.world

SCAN = ["--batch-size", "4", "--workers", "1", "--device", "cpu", "--quiet"]


def _one_line_error(capsys, *words) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("markguard "), err
    for w in words:
        assert w in err, err


def test_wrong_index_model_pairing_exits_2(world, tmp_path, capsys):
    other = make_model(tmp_path / "other", seed=7)
    assert main(["scan", str(world.dump), "-i", str(world.index), "-m", str(other), "-o", str(tmp_path / "o"), *SCAN]) == 2
    _one_line_error(capsys, "built by model", str(other))


def test_missing_column_unreadable_manifest_and_bad_shard_exit_2(world, tmp_path, capsys):
    bad = tmp_path / "m.csv"
    bad.write_text("listing,image_path\nL1,a.jpg\n")
    assert main(["scan", str(bad), "-i", str(world.index), "-o", str(tmp_path / "a"), *SCAN]) == 2
    _one_line_error(capsys, "missing column", "listing_id")
    garbage = tmp_path / "g.jsonl"
    garbage.write_text('{"listing_id": "a", "image_path": "a.jpg"}\nnot json\n')
    assert main(["scan", str(garbage), "-i", str(world.index), "-o", str(tmp_path / "b"), *SCAN]) == 2
    _one_line_error(capsys, "g.jsonl:2", "not valid JSON")
    assert main(["scan", str(world.dump), "-i", str(world.index), "-o", str(tmp_path / "c"), "--shard", "3/2", *SCAN]) == 2
    _one_line_error(capsys, "--shard")
    assert main(["scan", str(tmp_path / "nope.csv"), "-i", str(world.index), "-o", str(tmp_path / "d"), *SCAN]) == 2
    _one_line_error(capsys, "no such file")


def test_other_scans_folder_and_unfinished_scan_exit_2(world, scanned, tmp_path, capsys):
    assert main(["scan", str(world.dump), "-i", str(world.index), "-o", str(scanned), "--shard", "0/3", *SCAN]) == 2
    _one_line_error(capsys, "another scan")
    out = tmp_path / "o"
    assert main(["scan", str(world.dump), "-i", str(world.index), "-o", str(out), *SCAN]) == 0
    (out / "summary.json").unlink()
    (out / "results.jsonl").rename(out / "results.jsonl.partial")
    capsys.readouterr()
    assert main(["scan", str(world.dump), "-i", str(world.index), "-o", str(out), *SCAN]) == 2
    _one_line_error(capsys, "--resume")
    assert main(["scan", str(world.dump), "-i", str(world.index), "-o", str(out), "--resume", *SCAN]) == 0
    assert read_rows(out) == read_rows(scanned)
    assert main(["scan", str(world.dump), "-i", str(world.index), "-o", str(out), *SCAN]) == 0
    assert "already finished" in capsys.readouterr().out


@pytest.mark.parametrize("n", [3])
def test_merge_of_shards_equals_the_unsharded_scan(world, scanned, tmp_path, capsys, n):
    outs = []
    for i in reversed(range(n)):  # any order
        out = tmp_path / f"shard{i}"
        assert main(["scan", str(world.dump), "-i", str(world.index), "-o", str(out), "--shard", f"{i}/{n}", *SCAN]) == 0
        outs.append(str(out))
    merged = tmp_path / "merged"
    assert main(["merge", *outs, "-o", str(merged), "--format", "parquet"]) == 0
    assert (merged / "results.jsonl").read_bytes() == (scanned / "results.jsonl").read_bytes()
    s, whole = json.loads((merged / "summary.json").read_text()), json.loads((scanned / "summary.json").read_text())
    assert s["images"] == whole["images"] and s["counts"] == whole["counts"]
    assert s["references"] == whole["references"] and s["policy"] == whole["policy"]
    assert sorted(m["shard"][0] for m in s["merged_from"]) == list(range(n))
    assert (merged / "results.parquet").exists()
    capsys.readouterr()
    # a shard missing, or twice, or a foreign output: refused in one line
    assert main(["merge", *outs[:-1], "-o", str(tmp_path / "m2")]) == 2
    _one_line_error(capsys, "exactly once", "missing [0]")
    assert main(["merge", *outs, outs[0], "-o", str(tmp_path / "m3")]) == 2
    _one_line_error(capsys, "repeated [2]")
    assert main(["merge", *outs[1:], str(scanned), "-o", str(tmp_path / "m4")]) == 2
    _one_line_error(capsys, "not a sharded scan")
    assert main(["merge", *outs, "-o", str(merged)]) == 2
    _one_line_error(capsys, "not empty")


def test_index_build_info_add_remove(world, tmp_path, capsys):
    idx = tmp_path / "idx"
    assert main(["index", "build", str(world.gallery), "-o", str(idx), "-m", str(world.model), "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ntotal"] == 3 and info["brands"] == 3 and info["skipped"] == 0
    assert main(["index", "remove", str(idx), "--brand", "brand001"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 1
    assert main(["index", "remove", str(idx), "--brand", "brand001"]) == 2
    _one_line_error(capsys, "nothing matches")
    assert main(["index", "add", str(idx), str(world.gallery), "--device", "cpu"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["added"] == 1 and added["already_indexed"] == 2 and added["total"] == 3
    assert main(["index", "info", str(idx)]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(world.model.resolve())
