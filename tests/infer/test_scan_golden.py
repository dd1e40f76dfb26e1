"""The scan's rows, byte for byte, as the scan wrote them before it was restructured (issue 22: one plan resolved once,
typed evidence serialised once): similarity only, verification, a background bank with a combiner on every signal and
OCR. The golden files come from ``golden/make_golden.py`` run on the code before the change (main as of the merge of
the OCR-per-photo and pyramid work, before the scan plan)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_scan import make_world  # sibling module: pytest puts tests/infer on sys.path

GOLDEN = Path(__file__).resolve().parent / "golden"
CONFIGS = ("similarity", "verify", "thresholds", "everything")


class TextEngine:
    """Stands in for RapidOCR's detector and recogniser: one line a photo, naming a brand that depends on the pixels,
    so reads differ from photo to photo."""

    def text_det(self, bgr):
        return [[[2, 2], [62, 2], [62, 22], [2, 22]]], 0.0

    def text_rec(self, crops):
        words = ["BRAND0O1", "Brand002", "nothing here"]
        return [(words[int(c.mean()) % 3], 0.9) for c in crops], 0.0


def golden_world(root: Path):
    from markguard.infer.build import build_index

    world = make_world(root, listings=12)
    build_index(world.gallery, root / "bank-index", model=world.model, device="cpu", bank=4)
    return world


def scan_config(world, name: str, out: Path) -> Path:
    from markguard.checkpoint import load_card
    from markguard.infer.combine import Combiner
    from markguard.infer.ocr import OcrReader
    from markguard.infer.scan import ScanOptions, run_scan

    # PyTorch runs the backbone, as when the golden rows were made (the default backend's rows: test_default_backend_*)
    base = dict(batch_size=4, workers=0, device="cpu", ocr=name == "everything", backend="torch")
    index = world.index
    if name == "similarity":
        opts = ScanOptions(**base, flag=-1.0, review=-1.0, verify=False)
    elif name == "verify":
        opts = ScanOptions(**base, flag=-1.0, review=-1.0, verify=True)
    elif name == "thresholds":
        opts = ScanOptions(**base, verify=True, k=5, max_matches=3)
    else:
        index = world.root / "bank-index"
        fp = load_card(world.model).fingerprint
        # every signal with a weight: the probabilities depend on each number the combiner reads
        n = 2 + 2 + 4 + 4
        weights = [0.0, 3.0, 0.0, 2.0, 0.0, 0.5, 1.0, 0.7, 0.0, 0.2, 1.5, -1.5]
        path = Combiner(["similarity", "similarity_norm", "geometry", "text"], weights, -0.3, [0.5] * n, [0.25] * n, fp).save(out.parent / f"{name}-combiner.json")
        opts = ScanOptions(**base, verify=True, ocr_budget=1, combiner=str(path), k=1, max_matches=6, flag=0.7, review=0.0)
    engine = OcrReader.engine
    OcrReader.engine = lambda self: TextEngine()  # noqa: E731  (restored below)
    try:
        run_scan(world.dump, [index], out, opts=opts, progress=False)
    finally:
        OcrReader.engine = engine
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return golden_world(tmp_path_factory.mktemp("golden-world"))


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_the_rows_are_byte_identical_to_the_scan_before_the_plan(world, tmp_path, name):
    pytest.importorskip("cv2", reason="the golden rows were made with verification (OpenCV)")
    import torch

    made_with = json.loads((GOLDEN / "meta.json").read_text())["torch"]
    if torch.__version__.split("+")[0] != made_with:
        pytest.skip(f"the golden rows were made with torch {made_with}; a randomly initialised model's similarities differ "
                    f"in the last places with torch {torch.__version__} (regenerate with golden/make_golden.py on main)")
    out = scan_config(world, name, tmp_path / name)
    got = (out / "results.jsonl").read_bytes().splitlines()
    want = (GOLDEN / f"{name}.jsonl").read_bytes().splitlines()
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a == b
    rows = [json.loads(line) for line in want]
    assert sum(r["status"] == "error" for r in rows) == 4 and any(r["matches"] for r in rows)
    if name == "everything":  # the golden file exercises what it claims to
        ev = [m.get("evidence", {}) for r in rows for m in r["matches"]]
        assert any("inliers" in e for e in ev) and any("text" in e for e in ev) and any("similarity_norm" in e for e in ev)
        assert any(m["mark"] is None for r in rows for m in r["matches"])


@pytest.mark.slow
def test_default_backend_gives_pytorchs_rows(world, tmp_path, capsys, monkeypatch):
    """The default backend (ONNX Runtime fp32 on a CPU, exported on first use) embeds as PyTorch does: the same
    decisions, brands and boxes on every row, each score within rounding; the export is announced once, then cached."""
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is a base dependency (the default backend)")
    from markguard.infer.scan import ScanOptions, run_scan

    monkeypatch.setenv("MARKGUARD_CACHE", str(tmp_path / "cache"))  # a cache of its own: this model's first scan
    rows = {}
    for backend in ("torch", "auto", "auto"):
        out = tmp_path / f"{backend}-{len(rows)}"
        run_scan(world.dump, [world.index], out, opts=ScanOptions(batch_size=4, workers=0, device="cpu", verify=False,
                                                                  flag=-1.0, review=-1.0, backend=backend), progress=False)
        rows[out.name] = [json.loads(line) for line in (out / "results.jsonl").read_bytes().splitlines()]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["options"]["backend"] == ("torch" if backend == "torch" else "onnx")
    torch_rows, first, again = rows.values()
    assert first == again
    for a, b in zip(torch_rows, first):
        assert (a["status"], a["brand"], a["box"]) == (b["status"], b["brand"], b["box"])
        assert a["score"] is None and b["score"] is None or abs(a["score"] - b["score"]) <= 2e-4
    err = capsys.readouterr().err
    assert err.count("exporting model") == 1 and "cached at" in err
