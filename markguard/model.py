"""The embedding model: a timm backbone, GeM pooling and a projection to an L2-normalised embedding.

The same pooling and projection serve a whole image and any region of its feature map, so a
scan runs the backbone once per photo and pools every candidate region from that one pass.
"""

from __future__ import annotations

from enum import Enum

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from markguard.errors import MarkguardError


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al.): p=1 is average, large p approaches max."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        return x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class AvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


class MaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(-2, -1))


class Pooling(Enum):
    """Pooling by name, as a recipe writes it."""

    gem = GeM
    avg = AvgPool
    max = MaxPool

    @classmethod
    def create(cls, name: str) -> nn.Module:
        try:
            return cls[name].value()
        except KeyError:
            raise MarkguardError(f"unknown pooling '{name}'; choose one of {', '.join(m.name for m in cls)}") from None


def create_backbone(name: str, *, pretrained: bool = False, weights: str | None = None, output_stride: int = 32) -> nn.Module:
    """A timm backbone without its classifier; ``weights`` is a local file (never a download in tests)."""
    kwargs = dict(pretrained=pretrained or weights is not None, num_classes=0, global_pool="")
    if weights is not None:
        kwargs["pretrained_cfg_overlay"] = dict(file=str(weights))
    if output_stride != 32:
        kwargs["output_stride"] = output_stride
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise MarkguardError(f"unknown backbone '{name}'; see timm.list_models() for the names timm knows") from None
        raise
    except TypeError:
        if output_stride != 32:
            raise MarkguardError(f"backbone '{name}' does not support output_stride={output_stride}; use 32 or a CNN that dilates (resnet*, convnext*)") from None
        raise


class EmbeddingModel(nn.Module):
    """Backbone → feature map → pooling → linear projection → L2 normalisation."""

    def __init__(
        self,
        backbone: str = "resnet18",
        dim: int = 128,
        pooling: str = "gem",
        *,
        pretrained: bool = False,
        weights: str | None = None,
        output_stride: int = 32,
        roi_size: int = 3,
        proposals: dict | None = None,
    ):
        super().__init__()
        self.backbone_name = backbone
        self.backbone = create_backbone(backbone, pretrained=pretrained, weights=weights, output_stride=output_stride)
        self.num_features = self.backbone.num_features
        self.output_stride = output_stride
        self.pool = Pooling.create(pooling)
        self.head = nn.Linear(self.num_features, dim)
        self.dim = dim
        self.roi_size = roi_size
        self.proposals = dict(proposals or {})
        self.proposal_head = None  # a learned head on the feature map that predicts where marks are (when configured)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map, NCHW (token outputs of ViTs are folded back to a grid)."""
        f = self.backbone.forward_features(x)
        if f.ndim == 3:  # ViT-style tokens: drop prefix tokens, fold the patch grid back
            f = f[:, getattr(self.backbone, "num_prefix_tokens", 0) :]
            side = int(f.shape[1] ** 0.5)
            f = f.transpose(1, 2).reshape(f.shape[0], f.shape[2], side, side)
        elif f.shape[1] != self.num_features and f.shape[-1] == self.num_features:
            f = f.permute(0, 3, 1, 2)  # NHWC backbones
        return f

    def embed_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(pooled.float()), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_pooled(self.pool(self.forward_features(x).float()))

    def stride_of(self, fmap: torch.Tensor, input_size: int) -> float:
        return input_size / fmap.shape[-1]

    def embed_regions(self, fmap: torch.Tensor, boxes: list[torch.Tensor], input_size: int) -> torch.Tensor:
        """Embeddings of regions pooled from ``fmap``; ``boxes[i]`` is (R_i, 4) x0,y0,x1,y1 in input pixels of image i."""
        scale = fmap.shape[-1] / input_size
        crops = roi_align(fmap.float(), [b.float() for b in boxes], output_size=self.roi_size, spatial_scale=scale, sampling_ratio=2, aligned=True)
        return self.embed_pooled(self.pool(crops))

    def proposal_loss(self, fmap: torch.Tensor, boxes: torch.Tensor, has_mark: torch.Tensor, input_size: int) -> torch.Tensor:
        """Loss of the proposal head against one true box per image (``has_mark`` False: background only)."""
        raise NotImplementedError("this model has no proposal head")
