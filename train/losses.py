"""Metric-learning losses by name, composed from pytorch-metric-learning."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from torch import nn

from markguard.errors import MarkguardError


@dataclass(frozen=True)
class LossSpec:
    pml_class: str  # the pytorch-metric-learning loss; also keeps Enum values distinct
    proxy: bool  # owns per-class parameters (built with num_classes and embedding_size; its parameters join the optimiser)
    defaults: dict = field(default_factory=dict, hash=False)  # the keyword arguments a recipe's loss_kwargs may override
    miner: str | None = None  # a pytorch-metric-learning miner, built with miner_kwargs
    miner_kwargs: dict = field(default_factory=dict, hash=False)

    def check_kwargs(self, name: str, kwargs: dict) -> None:
        unknown = sorted(set(kwargs) - set(self.defaults))
        if unknown:
            takes = ", ".join(self.defaults) or "none"
            raise MarkguardError(f"loss_kwargs {', '.join(unknown)}: loss {name} takes {takes}; drop them from loss_kwargs")


class Loss(Enum):
    """Losses a recipe can name; each value says how it is built."""

    cosface = LossSpec("CosFaceLoss", proxy=True, defaults={"margin": 0.35, "scale": 30})
    arcface = LossSpec("ArcFaceLoss", proxy=True, defaults={"margin": 28.6, "scale": 30})  # margin in degrees
    subcenter_arcface = LossSpec("SubCenterArcFaceLoss", proxy=True, defaults={"margin": 28.6, "scale": 30, "sub_centers": 3})
    proxy_anchor = LossSpec("ProxyAnchorLoss", proxy=True, defaults={"margin": 0.1, "alpha": 32})
    multi_similarity = LossSpec("MultiSimilarityLoss", proxy=False, defaults={"alpha": 2, "beta": 50, "base": 0.5},
                                miner="MultiSimilarityMiner", miner_kwargs={"epsilon": 0.1})
    triplet = LossSpec("TripletMarginLoss", proxy=False, defaults={"margin": 0.2}, miner="BatchHardMiner")
    supcon = LossSpec("SupConLoss", proxy=False, defaults={"temperature": 0.1})

    @classmethod
    def named(cls, name: str) -> Loss:
        try:
            return cls[name]
        except KeyError:
            raise MarkguardError(f"unknown loss '{name}'; choose one of {', '.join(m.name for m in cls)}") from None


class MetricLoss(nn.Module):
    """A pml loss and its optional miner behind one call: ``loss(embeddings, labels)``."""

    def __init__(self, name: str, num_classes: int, dim: int, **kwargs):
        super().__init__()
        from pytorch_metric_learning import losses, miners  # its inference utilities patch faiss on import: only when training

        spec = Loss.named(name).value
        spec.check_kwargs(name, kwargs)
        self.name = name
        sizes = {"num_classes": num_classes, "embedding_size": dim} if spec.proxy else {}
        self.loss = getattr(losses, spec.pml_class)(**sizes, **{**spec.defaults, **kwargs})
        self.miner = getattr(miners, spec.miner)(**spec.miner_kwargs) if spec.miner else None

    def forward(self, embeddings, labels):
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, pairs) if pairs is not None else self.loss(embeddings, labels)
