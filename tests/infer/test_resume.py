"""Crash safety: a real `markguard scan` subprocess SIGKILLed at a random point, then `--resume`: every row exactly once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from markguard.infer.results import PARTIAL
from test_scan import read_rows, make_world


def scan_cmd(world, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "markguard.cli", "scan", str(world.dump), "-i", str(world.index), "-o", str(out),
            "--batch-size", "2", "--workers", "1", "--device", "cpu", "--quiet", *extra]


def _rows_written(partial: Path) -> int:
    try:
        return partial.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_and_resume(world, out: Path, after_rows: int, extra_s: float) -> dict:
    """Start a scan, SIGKILL its whole process group ``extra_s`` after it has written ``after_rows`` rows, resume it."""
    proc = subprocess.Popen(scan_cmd(world, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while proc.poll() is None and _rows_written(out / PARTIAL) < after_rows:
        time.sleep(0.005)
    time.sleep(extra_s)
    finished_first = proc.poll() is not None
    if not finished_first:
        os.killpg(proc.pid, signal.SIGKILL)  # the decode workers die with it, as in a lost machine
    proc.wait()
    partial = out / PARTIAL
    rows_before = sum(1 for _ in partial.open("rb")) if partial.exists() else None
    r = subprocess.run(scan_cmd(world, out, "--resume"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return {"after_rows": after_rows, "extra_s": extra_s, "killed": not finished_first, "rows_before_resume": rows_before}


def _decision(r: dict) -> tuple:
    return r["listing_id"], r["image"], r["status"], r["brand"], r["mark"], r["error"], sorted((m["brand"], m["mark"]) for m in r["matches"])


@pytest.fixture(scope="module")
def resume_world(tmp_path_factory):
    from markguard.infer.scan import ScanOptions, run_scan

    world = make_world(tmp_path_factory.mktemp("resume-world"), listings=24)
    ref = tmp_path_factory.mktemp("resume-ref") / "out"
    run_scan(world.dump, [world.index], ref, opts=ScanOptions(batch_size=2, workers=1, device="cpu"), progress=False)
    return world, read_rows(ref)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_then_resume_has_every_row_once(resume_world, tmp_path, seed):
    world, reference = resume_world
    rng = random.Random(seed)
    info = kill_and_resume(world, tmp_path / "out", rng.randrange(world.n_rows - 4), rng.uniform(0, 0.3))
    rows = read_rows(tmp_path / "out")
    keys = [(r["listing_id"], r["image"]) for r in rows]
    assert len(keys) == len(set(keys)) == world.n_rows, info
    # the same rows in the same order as an uninterrupted scan (scores to float noise: the reference ran in this process)
    assert [_decision(r) for r in rows] == [_decision(r) for r in reference], info
    assert [r["score"] for r in rows] == pytest.approx([r["score"] for r in reference], abs=2e-3)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["images"] == world.n_rows and sum(summary["counts"].values()) == world.n_rows
    assert not (tmp_path / "out" / PARTIAL).exists()


def test_resume_after_kill_between_rename_and_summary(tmp_path, resume_world):
    from test_scan import OPTS
    from markguard.infer.scan import run_scan

    world, _ = resume_world
    out = tmp_path / "out"
    run_scan(world.dump, [world.index], out, opts=OPTS, progress=False)
    reference = read_rows(out)
    (out / "summary.json").unlink()  # as if killed right after results.jsonl was renamed into place
    s = run_scan(world.dump, [world.index], out, opts=OPTS, progress=False, resume=True)
    assert read_rows(out) == reference and s["images"] == len(reference) and s["images_this_run"] == 0
