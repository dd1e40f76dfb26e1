"""Export: the backbone of a checkpoint as ONNX or TorchScript, with its fingerprint, checked against PyTorch."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from markguard.checkpoint import load_checkpoint, resolve_model_dir
from markguard.errors import MarkguardError
from markguard.infer.backends import EXPORT_FILES, FINGERPRINT_KEY, load_backend

FORMATS = tuple(EXPORT_FILES)
OPSET = 17


class _Features(torch.nn.Module):
    """The part that is exported: photo batch → feature map (the scan pools regions from it in PyTorch)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


def export_model(model_dir: str | Path | None, fmt: str, out: str | Path | None = None, *, check: bool = True) -> dict:
    """Write the backbone as ``fmt`` (default file: beside the weights) and, with ``check``, compare
    the embeddings it gives with PyTorch's; returns the path and the largest difference."""
    if fmt not in FORMATS:
        raise MarkguardError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    model_dir = resolve_model_dir(model_dir)
    model, card = load_checkpoint(model_dir)
    out = Path(out) if out is not None else model_dir / EXPORT_FILES[fmt]
    out.parent.mkdir(parents=True, exist_ok=True)
    graph = _Features(model).eval()
    example = torch.zeros(1, 3, card.scan_size, card.scan_size)
    tmp = out.with_name(f".{out.name}.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches: fixed per model
        if fmt == "onnx":
            try:
                import onnx
            except ImportError:
                raise MarkguardError("--format onnx needs onnx; pip install 'markguard[onnx]'") from None
            torch.onnx.export(graph, (example,), str(tmp), input_names=["images"], output_names=["features"],
                              dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "features": {0: "batch", 2: "fh", 3: "fw"}},
                              opset_version=OPSET, dynamo=False)
            proto = onnx.load(str(tmp))
            entry = proto.metadata_props.add()
            entry.key, entry.value = FINGERPRINT_KEY, card.fingerprint
            onnx.save(proto, str(tmp))
        else:
            traced = torch.jit.trace(graph, example)
            torch.jit.save(traced, str(tmp), _extra_files={"fingerprint": json.dumps(card.fingerprint)})
    tmp.replace(out)
    result = {"path": str(out), "format": fmt, "fingerprint": card.fingerprint}
    if check:
        result["max_abs_diff"] = parity(model_dir, fmt, out)
    return result


@torch.no_grad()
def parity(model_dir: str | Path, fmt: str, path: str | Path, *, batch: int = 2, seed: int = 0) -> float:
    """Largest absolute difference between PyTorch's and the exported backend's region embeddings
    on random photos of a size other than the traced one (so dynamic shapes are exercised too)."""
    ref_model, card = load_checkpoint(model_dir)
    exp_model, _ = load_backend(model_dir, fmt, path=path)
    g = torch.Generator().manual_seed(seed)
    h, w = card.scan_size, max(32, card.scan_size - 32)
    x = torch.randn(batch, 3, h, w, generator=g)
    boxes = [torch.tensor([[0.0, 0.0, w, h], [w * 0.25, h * 0.25, w * 0.75, h * 0.75]])] * batch
    a = ref_model.embed_regions(ref_model.forward_features(x), boxes, h)
    b = exp_model.embed_regions(exp_model.forward_features(x), boxes, h)
    return float((a - b).abs().max())
