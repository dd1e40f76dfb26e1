"""Backends: the scan's model with its backbone run by PyTorch, ONNX Runtime (fp32 or int8) or a TorchScript file.

Only the backbone (``forward_features``, nearly all the compute) moves to the exported graph; the
region pooling, projection and proposal head stay in PyTorch with the checkpoint's weights, so
regions are pooled the same way whatever runs the backbone.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from markguard.checkpoint import ModelCard, load_checkpoint, resolve_model_dir
from markguard.errors import MarkguardError

BACKENDS = ("torch", "onnx", "onnx-int8", "torchscript")
# default names beside the weights, where `markguard export` writes and `scan --backend` looks
EXPORT_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx", "torchscript": "model.torchscript.pt"}
ONNX_BACKENDS = ("onnx", "onnx-int8")
FINGERPRINT_KEY = "markguard_fingerprint"


def export_command(backend: str) -> str:
    """The command that writes ``backend``'s file (the int8 graph needs calibration photos)."""
    return f"markguard export --format {backend}" + (" --calib PHOTOS" if backend == "onnx-int8" else "") + " --model DIR"


class ExportedModel(torch.nn.Module):
    """Looks like EmbeddingModel to the scan; ``forward_features`` runs the exported backbone."""

    def __init__(self, model: torch.nn.Module, run_features, kind: str):
        super().__init__()
        model.backbone = torch.nn.Identity()  # the exported graph replaces it; free its weights
        self.inner = model
        self.run_features = run_features
        self.kind = kind

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.embed_pooled(self.inner.pool(self.forward_features(x).float()))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            # everything else (embed_regions, embed_pooled, proposal_head, propose, ...) is the PyTorch model's
            return getattr(self._modules["inner"], name)


class _OnnxRunner:
    def __init__(self, path: Path, device: str):
        import onnxruntime as ort  # optional: markguard[onnx]

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        # as many threads as torch uses (OMP_NUM_THREADS, torch.set_num_threads): ORT's own default is one a
        # core, and beside torch's pool and the decode workers that oversubscribes a small machine
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input: x.detach().float().contiguous().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def _onnx_fingerprint(path: Path) -> str | None:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return meta.get(FINGERPRINT_KEY)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def load_backend(model_dir: str | Path | None = None, backend: str = "torch", *, device: str = "cpu",
                 path: str | Path | None = None) -> tuple[torch.nn.Module, ModelCard]:
    """The scan's model and card; ``backend`` onnx/onnx-int8/torchscript runs the backbone from ``path``
    (default: the file ``markguard export`` wrote beside the weights), refused unless it was exported
    from this very checkpoint (same fingerprint)."""
    if backend not in BACKENDS:
        raise MarkguardError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    model, card = load_checkpoint(model_dir, device=device)
    if backend == "torch":
        return model, card
    file = Path(path) if path is not None else resolve_model_dir(model_dir) / EXPORT_FILES[backend]
    if not file.exists():
        raise MarkguardError(f"{file}: no exported model; run `{export_command(backend)}` first")
    if backend in ONNX_BACKENDS:
        try:
            found = _onnx_fingerprint(file)
            runner = _OnnxRunner(file, device)
        except ImportError:
            raise MarkguardError(f"--backend {backend} needs onnx and onnxruntime; pip install 'markguard[onnx]'") from None
        except Exception as e:  # protobuf's DecodeError and onnxruntime's pybind errors share no narrower base
            raise MarkguardError(f"{file}: not a readable ONNX model ({_first_line(e)}); export it again") from None
    else:
        import warnings

        extra = {"fingerprint": ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream but still the portable format
                runner = torch.jit.load(str(file), map_location=device, _extra_files=extra)
            found = json.loads(extra["fingerprint"] or "null")
        except (RuntimeError, ValueError) as e:  # not a TorchScript archive; a fingerprint that is not JSON
            raise MarkguardError(f"{file}: not a readable TorchScript model ({_first_line(e)}); export it again") from None
    if found != card.fingerprint:
        raise MarkguardError(f"{file}: exported from model {found}, not from this checkpoint ({card.fingerprint}); export it again")
    return ExportedModel(model, runner, backend).eval(), card
