"""The worked examples run: each notebook is executed with its tiny settings."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_notebook_runs(tmp_path):
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    # the same loop at test size: a few steps at tiny resolution
    params.source += ("\nBRANDS, LISTINGS, STEPS = 3, 8, 3\nTRAIN = ['backbone=resnet10t', 'input_size=48', 'scan_size=96', 'dim=32', "
                      "'batch_size=8', 'm_per_class=2', 'workers=0', 'calib_listings=8', 'warmup_steps=1']")
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "marks indexed" in outputs and "'precision'" in outputs and "report.html" in outputs
