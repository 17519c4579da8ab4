"""A tiny fully convolutional network for label-free confidence maps (Boserup & Selvan, 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class TinyFCNN(nn.Module):
    """Stack of 3x3 conv-BN-ReLU blocks with growing dilation, then a 1x1 classifier.

    The paper gives only the size (about 10.8k parameters) and that the network is fully
    convolutional. Our choices: dilations (1, 2, 4, 8) give a 31 px receptive field, about two
    MoNuSeg nucleus diameters at 40x, so a pixel sees its nucleus and the tissue around it;
    no pooling keeps full resolution, so confidence maps need no upsampling. The defaults
    have 10,801 parameters with 3 classes, 10,886 with the 8 of the shipped config.

    Args:
        in_channels: input channels.
        widths: output channels of the conv blocks.
        dilations: dilation of each block (same length as ``widths``).
        num_classes: channels of the confidence map (softmax over them).
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (14, 24, 20, 16),
        dilations: Sequence[int] = (1, 2, 4, 8),
        num_classes: int = 3,
    ) -> None:
        super().__init__()
        if len(widths) != len(dilations):
            raise ValueError(f"widths {tuple(widths)} and dilations {tuple(dilations)} differ")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        layers: list[nn.Module] = []
        channels = in_channels
        for width, dilation in zip(widths, dilations, strict=True):
            layers += [
                nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) for images (B, C, H, W) of any size."""
        return self.classifier(self.features(x))
