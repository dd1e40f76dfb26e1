"""Metric-learning losses by name, composed from pytorch-metric-learning."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from torch import nn

from markguard.errors import MarkguardError


@dataclass(frozen=True)
class LossSpec:
    pml_class: str  # the pytorch-metric-learning class; also keeps Enum values distinct
    proxy: bool  # owns per-class parameters (needs num_classes; its parameters join the optimiser)
    miner: str | None = None


class Loss(Enum):
    """Losses a recipe can name; each value says how it is built."""

    cosface = LossSpec("CosFaceLoss", proxy=True)
    arcface = LossSpec("ArcFaceLoss", proxy=True)
    subcenter_arcface = LossSpec("SubCenterArcFaceLoss", proxy=True)
    proxy_anchor = LossSpec("ProxyAnchorLoss", proxy=True)
    multi_similarity = LossSpec("MultiSimilarityLoss", proxy=False, miner="multi_similarity")
    triplet = LossSpec("TripletMarginLoss", proxy=False, miner="batch_hard")
    supcon = LossSpec("SupConLoss", proxy=False)


class MetricLoss(nn.Module):
    """A pml loss and its optional miner behind one call: ``loss(embeddings, labels)``."""

    def __init__(self, name: str, num_classes: int, dim: int, **kwargs):
        super().__init__()
        from pytorch_metric_learning import losses, miners

        try:
            spec = Loss[name].value
        except KeyError:
            raise MarkguardError(f"unknown loss '{name}'; choose one of {', '.join(m.name for m in Loss)}") from None
        self.name = name
        build = {
            "cosface": lambda: losses.CosFaceLoss(num_classes, dim, margin=kwargs.get("margin", 0.35), scale=kwargs.get("scale", 30)),
            "arcface": lambda: losses.ArcFaceLoss(num_classes, dim, margin=kwargs.get("margin", 28.6), scale=kwargs.get("scale", 30)),
            "subcenter_arcface": lambda: losses.SubCenterArcFaceLoss(num_classes=num_classes, embedding_size=dim, margin=kwargs.get("margin", 28.6), scale=kwargs.get("scale", 30), sub_centers=kwargs.get("sub_centers", 3)),
            "proxy_anchor": lambda: losses.ProxyAnchorLoss(num_classes=num_classes, embedding_size=dim, margin=kwargs.get("margin", 0.1), alpha=kwargs.get("alpha", 32)),
            "multi_similarity": lambda: losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5),
            "triplet": lambda: losses.TripletMarginLoss(margin=kwargs.get("margin", 0.2)),
            "supcon": lambda: losses.SupConLoss(temperature=kwargs.get("temperature", 0.1)),
        }
        self.loss = build[name]()
        self.miner = None
        if spec.miner == "multi_similarity":
            self.miner = miners.MultiSimilarityMiner(epsilon=0.1)
        elif spec.miner == "batch_hard":
            self.miner = miners.BatchHardMiner()

    def forward(self, embeddings, labels):
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, pairs) if pairs is not None else self.loss(embeddings, labels)
