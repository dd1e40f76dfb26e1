"""Export: the backbone of a checkpoint as ONNX (fp32 or int8) or TorchScript, with its fingerprint, checked against PyTorch."""

from __future__ import annotations

import itertools
import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from markguard.checkpoint import load_checkpoint, resolve_model_dir
from markguard.errors import MarkguardError, check_out_folder
from markguard.infer.backends import EXPORT_FILES, FINGERPRINT_KEY, load_backend
from markguard.infer.backends import BackboneFeatures as _Features
from markguard.infer.backends import export_onnx_graph as _export_onnx
from markguard.preprocess import resolve_preprocessing

FORMATS = tuple(EXPORT_FILES)
CALIB_COUNT = 64  # photos a static quantisation sees by default: ranges settle well before (ORT's examples use tens)
CALIB_BATCH = 8
PARITY_PHOTOS = 4
# convolutions at the start of the graph left in fp32 (with what lies between them): on the shipped
# EfficientNet-Lite0 the stem and blocks 0-2 (15 convolutions, 1/2 to 1/8 of the input's resolution) carry most
# of the int8 error; in fp32 the region embeddings' mean cosine to PyTorch's goes from 0.9958 to 0.9994 on
# held-out photos, at a cost lost in the shared machine's noise (benchmarks/results/backends.md)
FP32_CONVS = 15
# the embedding agreement `markguard export` asks of an int8 graph by default: the mean cosine similarity of
# its region embeddings to PyTorch's (the shipped model gives 0.99-0.996; 8-bit padding arithmetic gave 0.95-0.976)
INT8_MIN_COSINE = 0.98


@dataclass
class CalibrationPhotos:
    """Photos letterboxed and normalised as the scan gives them to the model, for static quantisation."""

    batches: list[np.ndarray]  # (n, 3, S, S) float32 each
    source: str
    unusable: int  # rows of the source that could not be decoded (each one's reason is the scan's error row)

    @property
    def count(self) -> int:
        return sum(len(b) for b in self.batches)


def calibration_photos(source: str | Path, card, count: int = CALIB_COUNT, *, batch_size: int = CALIB_BATCH) -> CalibrationPhotos:
    """The first ``count`` usable photos of ``source`` (a folder, manifest or tar shards, read as a listing dump),
    decoded and letterboxed by the scan's own decode stage at the card's scan size, mean and std."""
    from markguard.datasets.listings import open_dump
    from markguard.infer.decode import decode_items

    if count < 1:
        raise MarkguardError(f"--calib-count {count}: need at least 1 calibration photo")
    prep = resolve_preprocessing(card)
    try:
        items = open_dump(source)
    except MarkguardError as e:
        raise MarkguardError(f"--calib {e}") from None
    batches, unusable, have = [], 0, 0
    while have < count:
        chunk = list(itertools.islice(items, min(batch_size, count - have)))
        if not chunk:
            break
        batch = decode_items(chunk, size=prep.scan_size, mean=prep.mean, std=prep.std)
        unusable += len(batch.errors)
        if len(batch.x):
            batches.append(batch.x.numpy())
            have += len(batch.x)
    if not have:
        raise MarkguardError(f"--calib {source}: no usable photo ({unusable} rows could not be decoded); give a folder or manifest of listing-like photos")
    return CalibrationPhotos(batches, str(source), unusable)


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader protocol (``get_next``) over calibration batches."""

    def __init__(self, photos: CalibrationPhotos, input_name: str):
        self._batches = iter(photos.batches)
        self.input_name = input_name

    def get_next(self) -> dict | None:
        x = next(self._batches, None)
        return None if x is None else {self.input_name: x}


def shape_nodes(proto) -> list[str]:
    """Names of the nodes that compute shapes rather than pixels: fed by a Shape node's output, directly or
    through other such nodes, and otherwise only by constants (timm's TF "same" convolutions work out each
    Pad from the input size). Quantised, that arithmetic would be rounded to 8 bits on the ranges it took
    at the calibration size."""
    graph = proto.graph
    constant = {t.name for t in graph.initializer}
    derived: set[str] = set()
    names = []
    for node in graph.node:  # ONNX nodes are in topological order
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant" or (inputs and all(i in constant for i in inputs)):
            constant.update(node.output)  # constants, and what is computed from constants alone (weights' DequantizeLinear)
        elif node.op_type == "Shape":
            derived.update(node.output)
        elif any(i in derived for i in inputs) and all(i in derived or i in constant for i in inputs):
            derived.update(node.output)
            names.append(node.name)
    return names


def leading_nodes(proto, convs: int) -> list[str]:
    """Names of the graph's first ``convs`` convolutions and of every node before the next one."""
    names, seen = [], 0
    for node in proto.graph.node:
        if node.op_type == "Conv":
            if seen == convs:
                break
            seen += 1
        names.append(node.name)
    return names if convs > 0 else []


def _quantize_int8(fp32: Path, out: Path, photos: CalibrationPhotos, fp32_convs: int = 0) -> None:
    """Static int8 quantisation (ONNX Runtime): QDQ, per-channel int8 weights, uint8 activations whose ranges
    come from the calibration photos (min/max); the first ``fp32_convs`` convolutions stay fp32. uint8 x int8
    without reduce_range is ORT's advice for x86 with VNNI (and ARM); CPUs without VNNI may saturate the
    16-bit accumulation on a few layers."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="markguard-int8-", dir=out.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        # shape inference and graph optimisation first (Conv+BatchNorm folded), as ORT's guide recommends
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        proto = onnx.load(str(pre))
        convs = sum(n.op_type == "Conv" for n in proto.graph.node)
        if fp32_convs >= convs:
            raise MarkguardError(f"--fp32-convs {fp32_convs} leaves nothing to quantise: the backbone has {convs} convolutions")
        keep = sorted(set(shape_nodes(proto)) | set(leading_nodes(proto, fp32_convs)))
        quantize_static(str(pre), str(out), _CalibrationReader(photos, "images"), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep,
                        # ranges folded in every few batches: calibration memory stays a few batches' activations
                        extra_options={"CalibMaxIntermediateOutputs": 4})


def export_model(model_dir: str | Path | None, fmt: str, out: str | Path | None = None, *, check: bool = True,
                 calib: str | Path | None = None, calib_count: int = CALIB_COUNT, fp32_convs: int = FP32_CONVS) -> dict:
    """Write the backbone as ``fmt`` (default file: beside the weights) and, with ``check``, compare
    the embeddings it gives with PyTorch's; returns the path and the agreement (largest difference,
    lowest cosine similarity). ``onnx-int8`` is calibrated on the photos of ``calib``, its first
    ``fp32_convs`` convolutions left in fp32."""
    if fmt not in FORMATS:
        raise MarkguardError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fp32_convs < 0:
        raise MarkguardError(f"--fp32-convs {fp32_convs}: need 0 or more")
    if fmt == "onnx-int8" and calib is None:
        raise MarkguardError("--format onnx-int8 needs --calib PHOTOS: a folder or manifest of listing-like photos (not the ones you evaluate on)")
    if out is not None and Path(out).is_dir():
        raise MarkguardError(f"--out {out}: is a folder; give the file to write, e.g. {Path(out) / EXPORT_FILES[fmt]}")
    if out is not None:
        check_out_folder(Path(out).parent, f"--out {out}: its folder")
    model_dir = resolve_model_dir(model_dir)
    model, card = load_checkpoint(model_dir)
    photos = calibration_photos(calib, card, calib_count) if fmt == "onnx-int8" else None
    out = Path(out) if out is not None else model_dir / EXPORT_FILES[fmt]
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_export(_Features(model).eval(), card, fmt, out, photos, fp32_convs)
    except BaseException:
        for leftover in (out.with_name(f".{out.name}.tmp"), out.with_name(f".{out.name}.tmp.fp32")):
            leftover.unlink(missing_ok=True)  # a failed or interrupted export leaves no temporary file behind
        raise
    result = {"path": str(out), "format": fmt, "fingerprint": card.fingerprint, "bytes": out.stat().st_size}
    if photos is not None:
        result["calibration"] = {"photos": photos.count, "unusable": photos.unusable, "source": photos.source}
    if check:
        sample = None if photos is None else np.concatenate(photos.batches)[:PARITY_PHOTOS]
        result.update(parity(model_dir, fmt, out, photos=sample))
    return result


def _write_export(graph, card, fmt: str, out: Path, photos, fp32_convs: int) -> None:
    """The export written to a temporary file beside ``out``, then renamed onto it."""
    example = torch.zeros(1, 3, card.scan_size, card.scan_size)
    tmp = out.with_name(f".{out.name}.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches: fixed per model
        if fmt in ("onnx", "onnx-int8"):
            try:
                import onnx

                if fmt == "onnx-int8":
                    import onnxruntime.quantization  # noqa: F401
            except ImportError:
                raise MarkguardError(f"--format {fmt} needs onnx and onnxruntime; pip install 'markguard[onnx]'") from None
            _export_onnx(graph, example, tmp)
            if fmt == "onnx-int8":
                fp32 = tmp.with_name(f"{tmp.name}.fp32")
                tmp.replace(fp32)
                try:
                    _quantize_int8(fp32, tmp, photos, fp32_convs)
                finally:
                    fp32.unlink(missing_ok=True)
            proto = onnx.load(str(tmp))
            meta = {FINGERPRINT_KEY: card.fingerprint}
            if photos is not None:
                meta["markguard_calibration"] = json.dumps({"photos": photos.count, "source": Path(photos.source).name,
                                                            "size": card.scan_size, "method": "minmax", "fp32_convs": fp32_convs})
            for key, value in meta.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, value
            onnx.save(proto, str(tmp))
        else:
            traced = torch.jit.trace(graph, example)
            torch.jit.save(traced, str(tmp), _extra_files={"fingerprint": json.dumps(card.fingerprint)})
    tmp.replace(out)


def _cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


@torch.no_grad()
def parity(model_dir: str | Path, fmt: str, path: str | Path, *, photos: np.ndarray | None = None, batch: int = 2,
           seed: int = 0) -> dict[str, float]:
    """Agreement of PyTorch's and the exported backend's region embeddings: the largest absolute difference
    and the lowest and mean cosine similarity, at two shapes other than the traced one (a non-square one at the scan
    size and a square at the training input size), so dynamic batch, height and width are exercised.

    ``photos`` (letterboxed at the scan size) are what an int8 graph is checked on: its activation ranges
    were set on photos, and random noise would fall outside them."""
    ref_model, card = load_checkpoint(model_dir)
    exp_model, _ = load_backend(model_dir, fmt, path=path)
    if photos is None:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, 3, card.scan_size, card.scan_size, generator=g)
    else:
        x = torch.from_numpy(np.ascontiguousarray(photos))
    worst_abs, cosines = 0.0, []
    for h, w in ((card.scan_size, max(32, card.scan_size - 32)), (card.input_size, card.input_size)):
        xi = x[:, :, :h, :w].contiguous()
        boxes = [torch.tensor([[0.0, 0.0, w, h], [w * 0.25, h * 0.25, w * 0.75, h * 0.75]])] * len(xi)
        a = ref_model.embed_regions(ref_model.forward_features(xi), boxes, w)
        b = exp_model.embed_regions(exp_model.forward_features(xi), boxes, w)
        worst_abs = max(worst_abs, float((a - b).abs().max()))
        cosines.append(_cosine_rows(a, b))
    cos = torch.cat(cosines)
    return {"max_abs_diff": worst_abs, "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}
