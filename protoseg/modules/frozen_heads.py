"""Small trainable layers on a frozen dense embedder (e.g. LiteMedSAM's image encoder,
:class:`~protoseg.modules.sam_encoder.SamEncoderEmbedder`).

A frozen encoder's embeddings are computed once per image and cached, so that a classifier
or a segmentation head on them trains in seconds on a CPU where the encoder itself takes
seconds a tile. Both nets standardise the embeddings with a BatchNorm without affine terms
(its running statistics: the training set's mean and spread per channel).

- :class:`EncoderCAMNet`: a 1x1 class layer (one map per class: the CAMs) pooled to image
  logits by log-sum-exp (Pinheiro & Collobert, CVPR 2015) or the mean; in training each
  image contributes one random ``crop_cells`` crop of its embedding grid, so that a crop
  (not the whole image) has to carry the image's label.
- :class:`EncoderSegNet`: a 3x3 convolution, ReLU and a 1x1 class layer, upsampled to the
  image: a dense head trained on pseudo masks.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


def lse_pool(maps: torch.Tensor, r: float) -> torch.Tensor:
    """Log-sum-exp pooling of (B, K, h, w) maps to (B, K): ``log(mean(exp(r x))) / r``,
    between the mean (r -> 0) and the maximum (r -> inf)."""
    flat = maps.flatten(2)
    return (torch.logsumexp(r * flat, dim=2) - math.log(flat.shape[2])) / r


def frozen_embeddings(embedder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) float32 embeddings of (B, 3, H, W) images, outside autograd."""
    with torch.no_grad():
        return embedder(images).float()


class EncoderCAMNet(nn.Module):
    """Frozen embedder -> standardised embeddings -> 1x1 class layer -> maps and logits.

    The same interface as :class:`~protoseg.modules.cam.CAMNet` (``forward`` -> logits and
    raw maps, ``normalise_cams``, ``num_classes``), so that
    :class:`~protoseg.lightning_modules.cam_classifier.CAMClassifierModule` trains either.

    Args:
        embedder: frozen dense embedder (B, 3, H, W) -> (B, D, h, w), with ``dim`` = D.
        num_classes: K.
        pooling: ``lse`` (log-sum-exp with ``lse_r``) or ``mean`` (CAM's average pooling).
        lse_r: LSE's sharpness (5: chosen on a tuning fold of WSSS4LUAD, docs/cam_sam.md).
        crop_cells: side of the random crop of each training image's embedding grid (0: the
            whole grid).
    """

    def __init__(
        self,
        embedder: nn.Module,
        num_classes: int = 3,
        pooling: Literal["lse", "mean"] = "lse",
        lse_r: float = 5.0,
        crop_cells: int = 16,
    ) -> None:
        super().__init__()
        if pooling not in ("lse", "mean"):
            raise ValueError(f"pooling must be 'lse' or 'mean', got {pooling!r}")
        if lse_r <= 0 or crop_cells < 0:
            raise ValueError(f"need lse_r > 0 and crop_cells >= 0, got {lse_r}, {crop_cells}")
        self.embedder = embedder.requires_grad_(False)
        self.pooling, self.lse_r, self.crop_cells = pooling, lse_r, crop_cells
        self.num_classes = num_classes
        self.norm = nn.BatchNorm2d(embedder.dim, affine=False, momentum=None)
        self.classifier = nn.Conv2d(embedder.dim, num_classes, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> logits (B, K) and raw class maps (B, K, h, w) (in training, of
        each image's random crop)."""
        features = frozen_embeddings(self.embedder, images)
        if self.training and self.crop_cells:
            features = random_crops(features, self.crop_cells)
        maps = self.classifier(self.norm(features))
        logits = lse_pool(maps, self.lse_r) if self.pooling == "lse" else maps.mean(dim=(2, 3))
        return logits, maps

    @staticmethod
    def normalise_cams(maps: torch.Tensor) -> torch.Tensor:
        """Raw maps -> per-pixel class probabilities (the sigmoid of the class layer)."""
        return torch.sigmoid(maps)


def random_crops(features: torch.Tensor, size: int) -> torch.Tensor:
    """One random ``size`` x ``size`` crop of each (D, h, w) grid of a batch (torch's RNG)."""
    height, width = features.shape[-2:]
    h, w = min(size, height), min(size, width)
    crops = []
    for grid in features:
        y = int(torch.randint(height - h + 1, ()))
        x = int(torch.randint(width - w + 1, ()))
        crops.append(grid[:, y : y + h, x : x + w])
    return torch.stack(crops)


class EncoderSegNet(nn.Module):
    """Frozen embedder -> standardised embeddings -> 3x3 conv, ReLU, 1x1 -> logits upsampled
    to the image: (B, 3, H, W) -> (B, K, H, W), a dense head for
    :class:`~protoseg.lightning_modules.semantic.SemanticSegmentationModule`.

    Args:
        embedder: frozen dense embedder with ``dim``.
        num_classes: K (WSSS4LUAD: 3 tissue classes and the background).
        hidden: channels of the 3x3 convolution.
    """

    #: Images need no padding (whole-image inference pads to this): the embedder takes any
    #: size, and an unpadded image keeps the key of its cached embeddings.
    output_stride = 1

    def __init__(self, embedder: nn.Module, num_classes: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.embedder = embedder.requires_grad_(False)
        self.num_classes = num_classes
        self.head = nn.Sequential(
            nn.BatchNorm2d(embedder.dim, affine=False, momentum=None),
            nn.Conv2d(embedder.dim, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_classes, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(frozen_embeddings(self.embedder, images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
