"""Checkpoints: safetensors weights beside a JSON model card that carries the preprocessing.

A checkpoint is a folder holding ``model.safetensors`` and ``model_card.json``. Loading never
unpickles; the card's fingerprint (weights + preprocessing) must match the weights it sits beside.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from markguard import __version__
from markguard.errors import MarkguardError
from markguard.fsio import atomic_path, atomic_write_text, excerpt
from markguard.model import EmbeddingModel
from markguard.preprocess import REGION_DEFAULTS

WEIGHTS = "model.safetensors"
CARD = "model_card.json"
MAX_CARD_BYTES = 16 * 1024 * 1024  # a card is a few kB of settings and metrics
DEFAULT_MODEL_DIR = Path(__file__).parent / "weights"
# shipped models by name, wherever --model is taken: the logo model (the default) and the product model
NAMED_MODELS = {"logo": DEFAULT_MODEL_DIR, "product": DEFAULT_MODEL_DIR / "product"}


@dataclass
class ModelShape:
    """The network's settings that a recipe chooses and the model card keeps: defined once, for TrainConfig and ModelCard."""

    backbone: str = "resnet18"
    dim: int = 128
    pooling: str = "gem"
    output_stride: int = 16
    roi_size: int = 3
    input_size: int = 128  # training crops
    scan_size: int = 320  # long side of a listing photo at scan time (letterboxed square)

    def model_shape(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelShape)}


@dataclass
class ModelCard(ModelShape):
    """What a scan needs to use a model the way it was trained, and what is known about it."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resize: str = "letterbox"  # long side to scan_size, padded bottom/right with the mean colour
    regions: dict = field(default_factory=lambda: json.loads(json.dumps(REGION_DEFAULTS)))  # a fresh copy
    proposals: dict = field(default_factory=dict)  # the learned proposal head's settings; empty when the model has none
    init: dict = field(default_factory=dict)  # the pretrained weights it started from: source, sha256, licence; empty = from scratch
    thresholds: dict = field(default_factory=lambda: {"flag": 0.6, "review": 0.5, "per_brand": {}})
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    fingerprint: str = ""
    created: str = ""
    markguard_version: str = __version__

    def preprocessing(self) -> dict:
        """The fields that change what the model computes for a given photo."""
        keys = ("backbone", "dim", "pooling", "output_stride", "roi_size", "scan_size", "mean", "std", "resize")
        return {k: getattr(self, k) for k in keys} | {"regions": self.regions, "proposals": self.proposals}

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "model card") -> "ModelCard":
        from markguard.card import check_card_fields

        d = check_card_fields(d, source)  # type, range and length of every field, before anything uses one
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            shown = ", ".join(excerpt(k, 40) for k in sorted(unknown)[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise MarkguardError(f"{source}: unknown key(s) {shown}; was it written by a newer markguard?")
        return cls(**d)


def create_model(card: ModelCard, *, pretrained: bool = False, weights: str | None = None) -> EmbeddingModel:
    return EmbeddingModel(card.backbone, card.dim, card.pooling, pretrained=pretrained, weights=weights,
                          output_stride=card.output_stride, roi_size=card.roi_size, proposals=card.proposals or None)


def fingerprint(state: dict[str, torch.Tensor], card: ModelCard) -> str:
    """sha256 over the weights (in name order) and the preprocessing, shortened to 16 hex digits."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous().reshape(-1)
        h.update(name.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(json.dumps(card.preprocessing(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def save_checkpoint(model: EmbeddingModel, card: ModelCard, out_dir: str | Path) -> ModelCard:
    """Write weights and card; returns the card with its fingerprint and date filled in."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    card = dataclasses.replace(card, fingerprint=fingerprint(state, card),
                               created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    with atomic_path(out_dir / WEIGHTS) as tmp:  # renamed in whole, with the umask's mode
        save_file(state, str(tmp), metadata={"fingerprint": card.fingerprint})
    atomic_write_text(out_dir / CARD, json.dumps(dataclasses.asdict(card), indent=2))
    return card


def load_card(path: str | Path) -> ModelCard:
    path = Path(path)
    card_path = path / CARD if path.is_dir() else path
    if not card_path.exists():
        raise MarkguardError(f"{card_path}: model card not found; a checkpoint folder holds {WEIGHTS} and {CARD}")
    if card_path.stat().st_size > MAX_CARD_BYTES:
        raise MarkguardError(f"{card_path}: {card_path.stat().st_size:,} bytes, too large for a model card "
                             f"(at most {MAX_CARD_BYTES:,}); re-export the checkpoint")
    try:
        doc = json.loads(card_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MarkguardError(f"{card_path}: not valid JSON ({e.msg}); re-export the checkpoint") from None
    except UnicodeDecodeError:
        raise MarkguardError(f"{card_path}: not UTF-8 text, so not a model card; re-export the checkpoint") from None
    except RecursionError:
        raise MarkguardError(f"{card_path}: nested too deeply to be a model card; re-export the checkpoint") from None
    except ValueError as e:  # a number of more digits than Python converts (100,000-digit integers)
        raise MarkguardError(f"{card_path}: not a model card ({str(e).splitlines()[0][:120]}); re-export the checkpoint") from None
    return ModelCard.from_dict(doc, source=str(card_path))


def named_model(path: str | Path | None) -> str | Path | None:
    """``path``, or the shipped model's folder when it names one (``logo``, ``product``) and no such folder is here."""
    if isinstance(path, str) and path in NAMED_MODELS and not Path(path).exists():
        return NAMED_MODELS[path]
    return path


def model_name(path: str | Path | None) -> str:
    """How a message names a model: its shipped name, else its folder."""
    if path is None:
        return "logo"
    for name, folder in NAMED_MODELS.items():
        if Path(path).resolve() == folder.resolve():
            return name
    return str(path)


def model_kind(card: "ModelCard") -> str:
    """``product`` for a model that matches whole photos (its card's regions say ``product``), else ``logo``."""
    return "product" if (card.regions or {}).get("product") else "logo"


def resolve_model_dir(path: str | Path | None) -> Path:
    """The checkpoint to use: the one given (a folder, or a shipped model's name), else the shipped default."""
    path = named_model(path)
    if path is None:
        if not (DEFAULT_MODEL_DIR / WEIGHTS).exists():
            raise MarkguardError(f"no model given and no default model shipped in {DEFAULT_MODEL_DIR}; pass --model DIR (a folder from `markguard train`)")
        return DEFAULT_MODEL_DIR
    path = Path(path)
    if not (path / WEIGHTS).exists():
        raise MarkguardError(f"{path}: no {WEIGHTS} here; pass a checkpoint folder written by `markguard train` "
                             f"or a shipped model's name ({', '.join(NAMED_MODELS)})")
    return path


def load_checkpoint(path: str | Path | None = None, *, device: str = "cpu") -> tuple[EmbeddingModel, ModelCard]:
    """Model and card from a checkpoint folder (default: the shipped model); never unpickles."""
    path = resolve_model_dir(path)
    card = load_card(path)
    try:
        state = load_file(path / WEIGHTS)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise MarkguardError(f"{path / WEIGHTS}: unreadable safetensors file ({e}); re-train or re-download it") from None
    actual = fingerprint(state, card)
    if card.fingerprint and actual != card.fingerprint:
        raise MarkguardError(f"{path}: weights do not match the model card (fingerprint {actual} != {card.fingerprint}); the folder mixes two checkpoints")
    model = create_model(card)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MarkguardError(f"{path / WEIGHTS}: weights do not fit backbone '{card.backbone}' (missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    return model.to(device).eval(), card
