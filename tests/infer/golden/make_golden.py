"""Writes the golden results.jsonl files test_scan_golden.py compares against (run once, on the code they pin).

    python tests/infer/golden/make_golden.py   # from the repository root, with the worktree's venv

Each configuration scans the same small synthetic world (test_scan.make_world, seed 0) with a fixed
configuration; the rows of that scan are stored byte for byte. They were made on main before the scan
plan and typed evidence (issue 22), so the test shows the restructured scan writes identical rows.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    import torch

    from test_scan_golden import CONFIGS, golden_world, scan_config

    with tempfile.TemporaryDirectory() as tmp:
        world = golden_world(Path(tmp) / "world")
        for name in CONFIGS:
            out = scan_config(world, name, Path(tmp) / name)
            (HERE / f"{name}.jsonl").write_bytes((out / "results.jsonl").read_bytes())
    (HERE / "meta.json").write_text(json.dumps({"torch": torch.__version__.split("+")[0]}) + "\n")


if __name__ == "__main__":
    main()
