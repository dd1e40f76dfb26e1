"""Every benchmark script still runs: its --quick mode, in a subprocess, must exit 0 and print results."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCH.glob("bench_*.py"))


def test_there_are_benchmarks():
    assert {"bench_decode.py", "bench_index.py", "bench_train.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_mode_runs(script, tmp_path):
    out = subprocess.run([sys.executable, str(BENCH / script), "--quick"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip(), f"{script} --quick printed nothing"
