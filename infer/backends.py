"""Backends: the scan's model with its backbone run by PyTorch, ONNX Runtime (fp32 or int8) or a TorchScript file.

Only the backbone (``forward_features``, nearly all the compute) moves to the exported graph; the
region pooling, projection and proposal head stay in PyTorch with the checkpoint's weights, so
regions are pooled the same way whatever runs the backbone.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from markguard.checkpoint import ModelCard, load_checkpoint, resolve_model_dir
from markguard.errors import MarkguardError

BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "torchscript")
# "auto", the scan's default: the backbone in ONNX Runtime fp32 on a CPU (the same embeddings as PyTorch to 1e-6, 1.6-2.1x its
# model-only rate on the idle 2-core bench machine, 3.1-3.3x under load: benchmarks/results/backends.md), exported once per model fingerprint into
# the cache; PyTorch on a GPU, with --compile, or where ONNX Runtime is not installed (one line on stderr says so)
DEFAULT_BACKEND = "auto"
# default names beside the weights, where `markguard export` writes and `scan --backend` looks
EXPORT_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx", "torchscript": "model.torchscript.pt"}
ONNX_BACKENDS = ("onnx", "onnx-int8")
FINGERPRINT_KEY = "markguard_fingerprint"
OPSET = 17


class BackboneFeatures(torch.nn.Module):
    """The part that is exported: photo batch → feature map (the scan pools regions from it in PyTorch)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


def export_onnx_graph(graph, example, path: Path) -> None:
    """``graph`` (photo batch → feature map) as ONNX at ``path``, dynamic in batch, height and width."""
    torch.onnx.export(graph, (example,), str(path), input_names=["images"], output_names=["features"],
                      dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "features": {0: "batch", 2: "fh", 3: "fw"}},
                      opset_version=OPSET, dynamo=False)


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
        # no spinning after a run: ORT's threads would otherwise busy-wait on the cores the decoding workers and
        # verification's OpenCV need between batches (100 real-bench photos, alternated: 3.2 → 3.7 img/s on the shared box)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input: x.detach().float().contiguous().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def _onnx_fingerprint(path: Path) -> str | None:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return meta.get(FINGERPRINT_KEY)


def cache_root() -> Path:
    """Where markguard caches what it can rebuild (exported graphs): $MARKGUARD_CACHE, else $XDG_CACHE_HOME/markguard,
    else ~/.cache/markguard."""
    if os.environ.get("MARKGUARD_CACHE"):
        return Path(os.environ["MARKGUARD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "markguard"


def _say(stream, line: str) -> None:
    (stream if stream is not None else sys.stderr).write(line + "\n")


def onnx_installed() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _fingerprint_or_none(path: Path) -> str | None:
    """The fingerprint an exported graph records, or None when it cannot be read as an ONNX model."""
    try:
        return _onnx_fingerprint(path)
    except Exception:  # protobuf's DecodeError and an unreadable file share no narrower base
        return None


def cached_onnx(model_dir: str | Path | None, card: ModelCard, *, stream=None) -> Path:
    """The fp32 ONNX graph of this checkpoint's backbone: the one ``markguard export`` wrote beside the weights when it
    was exported from this very checkpoint, else ``cache_root()/onnx/FINGERPRINT.onnx``, exported there the first time
    (a few seconds; one line on stderr) and again whenever the cached file does not record this fingerprint."""
    from markguard.fsio import own_folder

    beside = resolve_model_dir(model_dir) / EXPORT_FILES["onnx"]
    if beside.is_file() and _fingerprint_or_none(beside) == card.fingerprint:
        return beside
    folder = own_folder(cache_root(), "onnx")
    path = folder / f"{card.fingerprint}.onnx"
    if path.is_symlink() or path.exists():
        found = _fingerprint_or_none(path) if path.is_file() and not path.is_symlink() else None
        if found == card.fingerprint:
            return path
        _say(stream, f"backend: {path} is not model {card.fingerprint}'s graph ({'unreadable' if found is None else 'model ' + found}); exporting it again")
    else:
        _say(stream, f"backend: exporting model {card.fingerprint}'s backbone to ONNX once (cached at {path})")
    # written complete in a folder of its own, then renamed into place: a second scan exporting at the same time, or a
    # link planted at the name, never gets half a file (the rename replaces the entry itself)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
        write_onnx(model_dir, Path(tmp) / path.name)
        os.replace(Path(tmp) / path.name, path)
    return path


def write_onnx(model_dir: str | Path | None, path: Path) -> None:
    """The checkpoint's backbone as an fp32 ONNX graph at ``path``, stamped with the model's fingerprint
    (`markguard export --format onnx` adds its parity check to this)."""
    import warnings

    import onnx

    model, card = load_checkpoint(model_dir)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches: fixed per model
        export_onnx_graph(BackboneFeatures(model).eval(), torch.zeros(1, 3, card.scan_size, card.scan_size), path)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = FINGERPRINT_KEY, card.fingerprint
    onnx.save(proto, str(path))


def resolve_backend(backend: str, device: str = "cpu", *, compile: str | None = None, stream=None) -> str:
    """The backend a scan runs: ``auto`` is ONNX Runtime fp32 on a CPU without --compile, else PyTorch; a backend
    whose library is not installed falls back to PyTorch with one line on ``stream`` (stderr) saying so."""
    if backend not in BACKENDS:
        raise MarkguardError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.startswith("cuda") or compile:
            return "torch"
        if not onnx_installed():
            _say(stream, "backend: onnxruntime is not installed, so the backbone runs in PyTorch (about 2x slower on a CPU); "
                         "pip install 'markguard[onnx]'")
            return "torch"
        return "onnx"
    if backend in ONNX_BACKENDS and not onnx_installed():
        _say(stream, f"backend: --backend {backend} needs onnx and onnxruntime, which are not installed; running the backbone "
                     "in PyTorch instead (pip install 'markguard[onnx]')")
        return "torch"
    return backend


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def load_backend(model_dir: str | Path | None = None, backend: str = "torch", *, device: str = "cpu",
                 path: str | Path | None = None, stream=None) -> tuple[torch.nn.Module, ModelCard]:
    """The scan's model and card; ``backend`` onnx/onnx-int8/torchscript runs the backbone from ``path``
    (default: the file ``markguard export`` wrote beside the weights), refused unless it was exported
    from this very checkpoint (same fingerprint). ``auto`` (call :func:`resolve_backend` first to choose
    with --compile) and ``onnx`` without a file beside the weights use the graph cached by fingerprint."""
    chosen = resolve_backend(backend, device, stream=stream)
    model, card = load_checkpoint(model_dir, device=device)
    if chosen == "torch":
        return model, card
    if path is None and chosen == "onnx" and (backend == "auto" or not (resolve_model_dir(model_dir) / EXPORT_FILES["onnx"]).exists()):
        path = cached_onnx(model_dir, card, stream=stream)
    backend = chosen
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
