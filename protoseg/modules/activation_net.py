"""The PSM activation network: a timm encoder cut after its first stages, keeping every map."""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from torch import nn

from protoseg.modules.backbones import load_backbone_weights


class ShallowActivationNet(nn.Module):
    """timm encoder (``features_only``) returning its first stages' maps, shallowest first.

    PSM needs shallow feature maps (for the gradients) and a deep one (for the embedding the
    self-supervised loss is computed on); timm builds the model only up to the last stage in
    ``out_indices``, so the stages PSM does not use cost nothing. ResNet-18 with
    ``out_indices=(0, 1, 2)`` keeps the stem (stride 2, 64 ch), layer1 (stride 4, 64 ch) and
    layer2 (stride 8, 128 ch): 0.68M parameters.

    Args:
        name: any ``timm.create_model`` name with ``features_only`` support.
        out_indices: stages returned, ascending; the last one feeds the embedding.
        weights: None (random init) or a local weights file, see
            :func:`~protoseg.modules.backbones.load_backbone_weights`.
        in_chans: input channels.

    Attributes:
        channels: channels of each returned map.
        reductions: stride of each returned map.
        num_features: channels of the deepest map (the embedding width before the head).
    """

    def __init__(
        self,
        name: str = "resnet18",
        out_indices: Sequence[int] = (0, 1, 2),
        weights: str | None = None,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        indices = tuple(out_indices)
        if not indices or list(indices) != sorted(set(indices)):
            raise ValueError(f"out_indices must be ascending and distinct, got {indices}")
        self.name = name
        self.encoder = timm.create_model(
            name, pretrained=False, features_only=True, out_indices=indices, in_chans=in_chans
        )
        self.channels: list[int] = list(self.encoder.feature_info.channels())
        self.reductions: list[int] = list(self.encoder.feature_info.reduction())
        self.num_features: int = self.channels[-1]
        if weights is not None:
            load_backbone_weights(self.encoder, weights)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> one (B, C_l, H / r_l, W / r_l) map per returned stage."""
        return list(self.encoder(images))
