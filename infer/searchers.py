"""The indexes a scan searches, each opened with the model that built it (its fingerprint checked), and the device."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from markguard.checkpoint import CARD, DEFAULT_MODEL_DIR, ModelCard, load_checkpoint, model_kind, model_name, named_model
from markguard.errors import MarkguardError
from markguard.infer.backends import DEFAULT_BACKEND, load_backend, resolve_backend
from markguard.infer.index import MarkIndex
from markguard.infer.negatives import with_negatives
from markguard.infer.index_meta import check_index_meta
from markguard.model import compile_backbone
from markguard.preprocess import Preprocessing, resolve_preprocessing


@dataclass
class Searcher:
    """One index with the model that built it."""

    name: str
    path: Path
    index: object
    model: torch.nn.Module
    card: ModelCard
    brands: dict[str, dict]
    model_dir: Path | None = None  # where the model was loaded from (None: the shipped default); engines reload it
    bias: dict[int, float] | None = None  # each reference's background level (the index's bank), when it has one
    bank: dict | None = None  # how the bank was made ({images, regions, k}): what a combiner fitted on its scores depends on
    prep: Preprocessing = field(init=False)  # resolved once from the card

    def __post_init__(self):
        self.prep = resolve_preprocessing(self.card, source=str((self.model_dir or DEFAULT_MODEL_DIR) / CARD))



def load_searchers(index_paths: list[str | Path], model_path: str | Path | None, device: str, backend: str = DEFAULT_BACKEND,
                   *, compile: str | None = None) -> list[Searcher]:
    """Open each index with its model; the model's fingerprint must be the one the index was built with.

    ``backend`` runs each model's backbone (infer/backends.py; ``auto``: ONNX Runtime on a CPU where installed);
    ``compile`` names a torch.compile backend for each model's backbone (PyTorch backend only).
    """
    backend = resolve_backend(backend, device, compile=compile)
    searchers, models = [], {}
    names = [Path(p).name if len(index_paths) > 1 else "" for p in index_paths]
    for name in set(names):
        if names.count(name) > 1:
            raise MarkguardError(f"two indexes are named {name!r}; matches say which index they came from by folder name, so give them different folder names")
    for p, name in zip(index_paths, names):
        p = Path(p)
        index = MarkIndex.load(p)  # the vectors and their metadata, from one save
        meta = check_index_meta(index.require_meta(), p / "markguard.json")
        index = with_negatives(index, meta)  # reviewers' rejections (infer/feedback.py) lower look-alikes of their references
        mpath = named_model(model_path if model_path is not None else meta.get("model"))
        if mpath is not None and not Path(mpath).exists() and model_path is None:
            mpath = None  # the recorded model moved: fall back to the shipped default, the fingerprint check decides
        key = str(mpath)
        if key not in models:
            if backend == "torch":
                models[key] = load_checkpoint(mpath, device=device)
                if compile:
                    compile_backbone(models[key][0], compile)
            else:
                models[key] = load_backend(mpath, backend, device=device)
        model, card = models[key]
        built = meta.get("model_kind", "logo")
        if built != model_kind(card):
            name, kind = model_name(mpath), model_kind(card)
            given = f"{kind} model" if name == kind else f"{kind} model {name}"
            raise MarkguardError(f"{p}: a {built} index (built with the {model_name(named_model(meta.get('model')))} model) cannot be searched "
                                 f"with the {given}; leave out -m, or rebuild the index with --model {model_name(mpath)}")
        try:
            index.require_fingerprint(card.fingerprint)
        except MarkguardError as e:
            hint = "" if model_path is None else f" (model given with -m {model_path})"
            raise MarkguardError(f"{e}{hint}") from None
        if device.startswith("cuda"):
            sys.stderr.write(f"index {p}: {index.use_gpu()}\n")
        bias = {int(k): float(v) for k, v in (meta.get("bank") or {}).get("bias", {}).items()} or None
        searchers.append(Searcher(name, p, index, model, card, meta.get("brands", {}), None if mpath is None else Path(mpath), bias,
                                  bank_settings(meta)))
    return searchers



def bank_settings(meta: dict) -> dict | None:
    """An index's background bank without its per-reference biases: the pictures it was made of (deterministic
    for a count and a model) and how many nearest regions a bias averages. None for an index without a bank."""
    bank = meta.get("bank") or None
    return None if bank is None else {k: bank.get(k) for k in ("images", "regions", "k")}
