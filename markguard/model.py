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
from torchvision.ops import generalized_box_iou_loss, roi_align

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


PROPOSAL_DEFAULTS = {"hidden": 64, "top_k": 20, "score_thresh": 0.05, "nms_iou": 0.5, "focal_gamma": 2.0, "box_weight": 1.0}


class ProposalHead(nn.Module):
    """Class-agnostic mark finder on the embedding model's feature map (FCOS-style, one level).

    Per cell: a mark-ness logit and the distances (left, top, right, bottom) from the cell's centre
    to the mark's edges, in units of the feature stride. A 1x1 reduction then two 3x3 convs keep it
    a few percent of the backbone's cost.
    """

    def __init__(self, in_channels: int, hidden: int = 64):
        super().__init__()
        groups = 8 if hidden % 8 == 0 else 1
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1), nn.GroupNorm(groups, hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.GroupNorm(groups, hidden), nn.ReLU(inplace=True),
        )
        self.score = nn.Conv2d(hidden, 1, 3, padding=1)
        self.box = nn.Conv2d(hidden, 4, 3, padding=1)
        # start every cell at p(mark) = 0.01: with mostly-background cells a 0.5 start floods the loss (RetinaNet)
        nn.init.constant_(self.score.bias, -4.595)
        nn.init.normal_(self.score.weight, std=0.01)
        nn.init.normal_(self.box.weight, std=0.01)
        nn.init.constant_(self.box.bias, 0.5)

    def forward(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, H, W) and distances (B, 4, H, W) in strides, always positive."""
        h = self.stem(fmap.float())
        return self.score(h)[:, 0], F.softplus(self.box(h))


def cell_centres(h: int, w: int, stride: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres (x, y) of a feature map's cells in input pixels, each (H, W); the convention of roi_align(aligned=True)."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    return cx, cy


def distances_to_boxes(dist: torch.Tensor, stride: float) -> torch.Tensor:
    """(B, 4, H, W) distances in strides → (B, H, W, 4) boxes x0, y0, x1, y1 in input pixels."""
    cx, cy = cell_centres(dist.shape[-2], dist.shape[-1], stride, dist.device)
    d = dist.float() * stride
    return torch.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], dim=-1)


def proposal_targets(boxes: torch.Tensor, has_mark: torch.Tensor, h: int, w: int, stride: float) -> torch.Tensor:
    """Soft mark-ness targets (B, H, W): the FCOS centre-ness of cells inside the true box, 0 elsewhere.

    The cell holding the box's centre is always a positive (target 1), so a mark smaller than a
    cell still teaches the head something; background images (``has_mark`` False) have no positives.
    """
    cx, cy = cell_centres(h, w, stride, boxes.device)
    b = boxes.float()[:, :, None, None]
    l, t = cx - b[:, 0], cy - b[:, 1]
    r, btm = b[:, 2] - cx, b[:, 3] - cy
    inside = (l > 0) & (t > 0) & (r > 0) & (btm > 0)
    lr = torch.minimum(l, r).clamp(min=0) / torch.maximum(l, r).clamp(min=1e-6)
    tb = torch.minimum(t, btm).clamp(min=0) / torch.maximum(t, btm).clamp(min=1e-6)
    target = torch.where(inside, (lr * tb).sqrt(), torch.zeros_like(lr))
    # the centre cell (index clamped onto the map) is always positive
    ci = ((boxes[:, 0] + boxes[:, 2]) / 2 / stride).long().clamp(0, w - 1)
    cj = ((boxes[:, 1] + boxes[:, 3]) / 2 / stride).long().clamp(0, h - 1)
    target[torch.arange(len(boxes), device=boxes.device), cj, ci] = 1.0
    return target * has_mark.to(target.dtype)[:, None, None]


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
        if self.proposals:
            unknown = set(self.proposals) - set(PROPOSAL_DEFAULTS) - {"grid_scales"}
            if unknown:
                raise MarkguardError(f"unknown proposal setting(s) {sorted(unknown)}; known: {', '.join(sorted(PROPOSAL_DEFAULTS))}, grid_scales")
            self.proposal_head = ProposalHead(self.num_features, int(self.proposal_setting("hidden")))

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

    def pool_regions(self, fmap: torch.Tensor, boxes: list[torch.Tensor], input_size: int) -> torch.Tensor:
        """Pooled backbone features (sum R_i, num_features) of regions of ``fmap``, before the projection."""
        scale = fmap.shape[-1] / input_size
        crops = roi_align(fmap.float(), [b.float() for b in boxes], output_size=self.roi_size, spatial_scale=scale, sampling_ratio=2, aligned=True)
        return self.pool(crops)

    def embed_regions(self, fmap: torch.Tensor, boxes: list[torch.Tensor], input_size: int) -> torch.Tensor:
        """Embeddings of regions pooled from ``fmap``; ``boxes[i]`` is (R_i, 4) x0,y0,x1,y1 in input pixels of image i."""
        return self.embed_pooled(self.pool_regions(fmap, boxes, input_size))

    def proposal_setting(self, key: str):
        return self.proposals.get(key, PROPOSAL_DEFAULTS.get(key))

    def propose(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The proposal head's raw outputs on ``fmap``: logits (B, H, W) and distances (B, 4, H, W) in strides."""
        if self.proposal_head is None:
            raise MarkguardError("model has no proposal head; use --regions grid or train with proposals")
        return self.proposal_head(fmap)

    def proposal_loss(self, fmap: torch.Tensor, boxes: torch.Tensor, has_mark: torch.Tensor, input_size: int) -> torch.Tensor:
        """Loss of the proposal head against one true box per image (``has_mark`` False: background only).

        Mark-ness: focal BCE against centre-ness-weighted soft targets (quality focal loss, Li et al.
        2020); boxes: GIoU on positive cells, weighted by their centre-ness. Both are normalised by
        the batch's total positive weight, so background-heavy batches do not shrink the loss.
        """
        logits, dist = self.propose(fmap)
        stride = self.stride_of(fmap, input_size)
        h, w = logits.shape[-2:]
        target = proposal_targets(boxes.to(logits.device), has_mark.to(logits.device), h, w, stride)
        norm = target.sum().clamp(min=1.0)
        p = logits.sigmoid()
        gamma = float(self.proposal_setting("focal_gamma"))
        cls = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * (p - target).abs().pow(gamma)
        loss = cls.sum() / norm
        pos = target > 0
        if pos.any():
            pred = distances_to_boxes(dist, stride)[pos]
            truth = boxes.float().to(pred.device)[:, None, None, :].expand(-1, h, w, -1)[pos]
            giou = generalized_box_iou_loss(pred, truth, reduction="none")
            loss = loss + float(self.proposal_setting("box_weight")) * (giou * target[pos]).sum() / norm
        return loss


def compile_backbone(model, backend: str = "inductor") -> None:
    """Compile the backbone's forward pass in place (regions, pooling and head stay eager: their shapes vary)."""
    model.forward_features = torch.compile(model.forward_features, backend=backend, dynamic=False)
