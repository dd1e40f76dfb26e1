"""Export to ONNX (fp32, int8) / TorchScript: parity with PyTorch, fingerprint checks, and the backend a scan can swap in."""

from __future__ import annotations

import shutil

import pytest
import torch

from markguard.checkpoint import load_checkpoint
from markguard.cli import main
from markguard.errors import MarkguardError
from markguard.infer.backends import BACKENDS, EXPORT_FILES, load_backend
from markguard.train.export import calibration_photos, export_model


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model"
    shutil.copytree(tiny_model, out)
    return out


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    """Listing-like photos to calibrate an int8 export on (a folder dump)."""
    from markguard.datasets.synth import SynthConfig, synth_dataset

    data = synth_dataset(tmp_path_factory.mktemp("calib"), brands=3, marks_per_brand=1, distractor_brands=1, listings=12, seed=9,
                         cfg=SynthConfig(size=(96, 72)))
    return data["listings"]


def _cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=-1)


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


def test_int8_export_calibrates_and_agrees_at_any_size(model_dir, calib):
    result = export_model(model_dir, "onnx-int8", calib=calib, calib_count=10, fp32_convs=1)
    assert result["path"].endswith(EXPORT_FILES["onnx-int8"])
    assert result["calibration"] == {"photos": 10, "unusable": 0, "source": str(calib)}
    assert result["mean_cosine"] > 0.98 and result["min_cosine"] > 0.9  # not bit-exact, but the same embedding
    import onnx

    meta = {p.key: p.value for p in onnx.load(result["path"]).metadata_props}
    assert '"photos": 10' in meta["markguard_calibration"]
    assert {n.op_type for n in onnx.load(result["path"]).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    ref, card = load_checkpoint(model_dir)
    exp, card2 = load_backend(model_dir, "onnx-int8")
    assert card2.fingerprint == card.fingerprint
    photos = torch.from_numpy(calibration_photos(calib, card, 4).batches[0])
    with torch.no_grad():
        # dynamic batch and spatial size: the second look feeds crops smaller than the scan size through the same graph
        for n, h, w in ((3, 64, 48), (1, 32, 32), (2, 96, 64)):
            x = torch.nn.functional.interpolate(photos[:n], size=(h, w), mode="bilinear")
            fa, fb = ref.forward_features(x), exp.forward_features(x)
            assert fb.shape == fa.shape
            assert _cosine(ref.pool(fa), exp.pool(fb)).min() > 0.95


def test_cli_choices_are_the_backends():
    from markguard.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert set(next(a for a in sub["scan"]._actions if a.dest == "backend").choices) == set(BACKENDS)
    assert set(next(a for a in sub["export"]._actions if a.dest == "format").choices) == set(EXPORT_FILES)


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_scan_runs_through_onnx_backend(model_dir, calib, backend, tmp_path):
    from markguard.datasets.synth import SynthConfig, synth_dataset
    from markguard.infer.decide import Policy
    from markguard.infer.index import MarkIndex
    from markguard.infer.embed import embed_references
    from markguard.infer.scan import ScanOptions, Searcher, scan_rows
    from markguard.datasets.decode import load_mark
    from markguard.datasets.registry import load_gallery

    export_model(model_dir, backend, check=False, **({"calib": calib, "fp32_convs": 1} if backend == "onnx-int8" else {}))
    data = synth_dataset(tmp_path / "d", brands=3, marks_per_brand=1, distractor_brands=1, listings=6, seed=2, cfg=SynthConfig(size=(96, 72)))
    rows = {}
    for name in ("torch", backend):
        model, card = load_backend(model_dir, name)
        refs = load_gallery(data["gallery"]).marks
        vec = embed_references(model, card, [load_mark(r.path) for r in refs])
        index = MarkIndex.build(vec, [{"brand": r.brand, "mark": r.mark, "source": ""} for r in refs], fingerprint=card.fingerprint, kind="flat")
        s = Searcher("", data["listings"], index, model, card, {})
        rows[name] = [(r.status, r.score) for r in scan_rows(data["listings"] / "manifest.csv", [s], Policy(-1.0, -1.0), ScanOptions(workers=0))]
    assert len(rows[backend]) == 6 and all(status == "flag" for status, _ in rows[backend])
    # int8: the same photos score within a few hundredths of PyTorch's similarity
    assert [v for _, v in rows[backend]] == pytest.approx([v for _, v in rows["torch"]], abs=1e-4 if backend == "onnx" else 0.03)


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
    # the int8 graph: missing says how to make it; another checkpoint's is refused
    (other / EXPORT_FILES["onnx-int8"]).unlink(missing_ok=True)
    with pytest.raises(MarkguardError, match="markguard export --format onnx-int8 --calib PHOTOS"):
        load_backend(other, "onnx-int8")
    with pytest.raises(MarkguardError, match="not from this checkpoint"):
        load_backend(other, "onnx-int8", path=tmp_path / "stale.onnx")


def test_int8_export_needs_usable_calibration_photos(model_dir, calib, tmp_path):
    with pytest.raises(MarkguardError, match="--format onnx-int8 needs --calib"):
        export_model(model_dir, "onnx-int8")
    with pytest.raises(MarkguardError, match="^--calib .*nope: no such file or folder"):
        export_model(model_dir, "onnx-int8", calib=tmp_path / "nope")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(MarkguardError, match="no usable photo .1 rows could not be decoded"):
        export_model(model_dir, "onnx-int8", calib=tmp_path / "junk")
    with pytest.raises(MarkguardError, match="--fp32-convs 1000 leaves nothing to quantise: the backbone has"):
        export_model(model_dir, "onnx-int8", calib=calib, fp32_convs=1000)
    assert not list(model_dir.glob(".model.int8.onnx*")) and not list(model_dir.glob("markguard-int8-*"))


def test_export_cli(model_dir, tmp_path, capsys):
    assert main(["export", "--format", "onnx", "--model", str(model_dir), "--out", str(tmp_path / "m.onnx")]) == 0
    assert "max |embedding difference|" in capsys.readouterr().out
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_int8_keeps_the_padding_arithmetic_of_same_convolutions_in_fp32(tmp_path):
    """TF-"same" convolutions (timm's tf_ EfficientNets) work out each Pad from the input size at run time;
    quantised with the pixels, that arithmetic is rounded to 8 bits on ranges seen at the calibration size."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from timm.layers import Conv2dSame

    from markguard.train.export import CalibrationPhotos, _export_onnx, _quantize_int8, leading_nodes, shape_nodes

    torch.manual_seed(0)
    net = torch.nn.Sequential(Conv2dSame(3, 8, 3, stride=2), torch.nn.ReLU6(), Conv2dSame(8, 8, 3, stride=2), torch.nn.ReLU6()).eval()
    fp32, int8 = tmp_path / "f.onnx", tmp_path / "q.onnx"
    with torch.no_grad():
        _export_onnx(net, torch.zeros(1, 3, 64, 64), fp32)
    ops = {n.name: n.op_type for n in onnx.load(str(fp32)).graph.node}
    skipped = set(shape_nodes(onnx.load(str(fp32))))
    assert "Ceil" in {ops[n] for n in skipped} and not {ops[n] for n in skipped} & {"Conv", "Pad"}
    assert sum(op == "Clip" and n not in skipped for n, op in ops.items()) == 2  # the ReLU6s are pixels (the padding's max(., 0) is not)
    rng = np.random.default_rng(0)
    _quantize_int8(fp32, int8, CalibrationPhotos([rng.standard_normal((4, 3, 64, 64), dtype=np.float32)], "noise", 0))
    q = onnx.load(str(int8))
    q_ops = {n.name: n.op_type for n in q.graph.node}
    assert "QuantizeLinear" in q_ops.values()
    # the first convolution and what follows it up to the second (its ReLU6, the next one's padding) stay fp32
    first = [ops[n] for n in leading_nodes(onnx.load(str(fp32)), 1)]
    assert first.count("Conv") == 1 and first.count("Pad") == 2 and "Clip" in first and first[-1] == "Pad"
    assert leading_nodes(onnx.load(str(fp32)), 0) == []
    assert not {q_ops[n] for n in shape_nodes(q)} & {"QuantizeLinear", "DequantizeLinear"}
    run = {p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)}
    for h, w in ((64, 64), (37, 53)):  # an odd size pads differently from the calibrated one
        x = rng.standard_normal((2, 3, h, w), dtype=np.float32)
        a, b = (torch.from_numpy(s.run(None, {"images": x})[0]) for s in run.values())
        assert a.shape == b.shape
        assert _cosine(a, b).min() > 0.98
