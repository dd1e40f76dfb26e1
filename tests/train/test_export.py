"""Export to ONNX / TorchScript: parity with PyTorch, fingerprint checks, and the backend a scan can swap in."""

from __future__ import annotations

import shutil

import pytest
import torch

from markguard.checkpoint import load_checkpoint
from markguard.cli import main
from markguard.errors import MarkguardError
from markguard.infer.backends import EXPORT_FILES, load_backend
from markguard.train.export import export_model


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model"
    shutil.copytree(tiny_model, out)
    return out


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_parity(model_dir, fmt):
    result = export_model(model_dir, fmt)
    assert result["path"].endswith(EXPORT_FILES[fmt])
    assert result["max_abs_diff"] < 1e-4
    ref, card = load_checkpoint(model_dir)
    exp, card2 = load_backend(model_dir, fmt)
    assert card2.fingerprint == card.fingerprint
    x = torch.randn(3, 3, 64, 48)
    boxes = [torch.tensor([[2.0, 3.0, 40.0, 30.0]])] * 3
    with torch.no_grad():
        a = ref.embed_regions(ref.forward_features(x), boxes, 64)
        b = exp.embed_regions(exp.forward_features(x), boxes, 64)
        assert (a - b).abs().max() < 1e-4
        assert (ref(x) - exp(x)).abs().max() < 1e-4
    assert isinstance(exp.inner.backbone, torch.nn.Identity)  # the PyTorch backbone is not kept around


def test_scan_runs_through_onnx_backend(model_dir, tmp_path):
    from markguard.datasets.synth import SynthConfig, synth_dataset
    from markguard.infer.decide import Policy
    from markguard.infer.index import MarkIndex
    from markguard.infer.embed import embed_references
    from markguard.infer.scan import ScanOptions, Searcher, scan_rows
    from markguard.datasets.decode import load_mark
    from markguard.datasets.registry import load_gallery

    export_model(model_dir, "onnx", check=False)
    data = synth_dataset(tmp_path / "d", brands=3, marks_per_brand=1, distractor_brands=1, listings=6, seed=2, cfg=SynthConfig(size=(96, 72)))
    rows = {}
    for backend in ("torch", "onnx"):
        model, card = load_backend(model_dir, backend)
        refs = load_gallery(data["gallery"]).marks
        vec = embed_references(model, card, [load_mark(r.path) for r in refs])
        index = MarkIndex.build(vec, [{"brand": r.brand, "mark": r.mark, "source": ""} for r in refs], fingerprint=card.fingerprint, kind="flat")
        s = Searcher("", data["listings"], index, model, card, {})
        rows[backend] = [r.score for r in scan_rows(data["listings"] / "manifest.csv", [s], Policy(-1.0, -1.0), ScanOptions(workers=0))]
    assert len(rows["onnx"]) == 6
    assert rows["onnx"] == pytest.approx(rows["torch"], abs=1e-4)


def test_backend_refuses_stale_or_missing_export(model_dir, tmp_path):
    with pytest.raises(MarkguardError, match="unknown backend 'tensorrt'"):
        load_backend(model_dir, "tensorrt")
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    (other / EXPORT_FILES["torchscript"]).unlink(missing_ok=True)
    with pytest.raises(MarkguardError, match="markguard export --format torchscript"):
        load_backend(other, "torchscript")
    # an export of another checkpoint: same graph, another fingerprint
    import onnx

    from markguard.infer.backends import FINGERPRINT_KEY

    export_model(model_dir, "onnx", check=False)
    proto = onnx.load(str(model_dir / EXPORT_FILES["onnx"]))
    for p in proto.metadata_props:
        if p.key == FINGERPRINT_KEY:
            p.value = "0" * 16
    onnx.save(proto, str(tmp_path / "stale.onnx"))
    with pytest.raises(MarkguardError, match="not from this checkpoint"):
        load_backend(other, "onnx", path=tmp_path / "stale.onnx")


def test_export_cli(model_dir, tmp_path, capsys):
    assert main(["export", "--format", "onnx", "--model", str(model_dir), "--out", str(tmp_path / "m.onnx")]) == 0
    assert "max |embedding difference|" in capsys.readouterr().out
    assert (tmp_path / "m.onnx").stat().st_size > 0
