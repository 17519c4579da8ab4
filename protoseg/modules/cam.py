"""Class activation maps: a timm backbone with Attention Dropout Layers and a 1x1 class layer.

CAM (Zhou et al., CVPR 2016) with the class layer as a 1x1 convolution: its output before
global average pooling is each class's activation map. Attention Dropout (ADL; Choe & Shim,
"Attention-based Dropout Layer for Weakly Supervised Object Localization", CVPR 2019) hides
the most discriminative region during training, so that the maps spread over the whole of a
class's tissue instead of its most telling spot.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from protoseg.modules.backbones import load_backbone_weights


class AttentionDropout(nn.Module):
    """Attention-based Dropout Layer (Choe & Shim, CVPR 2019); the identity in eval mode.

    In training, the self-attention map is the channel mean of the features (B, 1, H, W).
    Each sample gets, with probability ``drop_rate``, the *drop mask* (0 where the attention
    is at least ``threshold`` x its maximum, the most discriminative region; 1 elsewhere), and
    otherwise the *importance map* (the attention's sigmoid); the features are multiplied by
    it. The paper draws one choice per batch; here each sample draws its own, so that a batch
    always mixes both.

    Args:
        drop_rate: probability of the drop mask (the paper's 0.75).
        threshold: fraction of the maximum attention above which pixels are dropped
            (the paper's 0.8 to 0.9).
    """

    def __init__(self, drop_rate: float = 0.75, threshold: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= drop_rate <= 1.0 or not 0.0 < threshold <= 1.0:
            raise ValueError(
                f"need 0 <= drop_rate <= 1, 0 < threshold <= 1: {drop_rate}, {threshold}"
            )
        self.drop_rate = drop_rate
        self.threshold = threshold

    def maps(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop mask and importance map (B, 1, H, W) of features (B, C, H, W)."""
        attention = features.mean(dim=1, keepdim=True)
        peak = attention.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
        drop_mask = (attention < self.threshold * peak).to(features.dtype)
        return drop_mask, torch.sigmoid(attention)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W); unchanged in eval mode."""
        if not self.training:
            return features
        drop_mask, importance = self.maps(features)
        use_drop = torch.rand(features.shape[0], 1, 1, 1, device=features.device) < self.drop_rate
        return features * torch.where(use_drop, drop_mask, importance)


class CAMNet(nn.Module):
    """timm backbone -> (ADL after chosen stages) -> 1x1 class layer -> maps and logits.

    Args:
        backbone: any ``timm.create_model`` name with ``features_only`` support.
        num_classes: K, the image-level classes.
        weights: ``None`` (random init) or a local file of backbone weights (a timm state dict,
            a protoseg SSL ``encoder_ckpt``, a Lightning checkpoint); nothing is downloaded.
        adl_stages: stage indices (of ``feature_info``, 0 = shallowest) whose outputs pass an
            :class:`AttentionDropout`; the paper puts ADL in the last stages of ResNet-50.
        drop_rate: ADL's drop rate.
        drop_threshold: ADL's threshold.
        output_stride: the backbone's stride (16 dilates ResNet's last stage: finer maps).
        input_scale: images are resized by this factor before the backbone (0.5: tissue
            classes read at half the magnification, for a quarter of the compute); the maps
            are upsampled to the image in :func:`rotation_averaged_cams`.
        stages: keep the backbone's first ``stages`` stages only (None: all). ResNet-18 cut
            after its third residual stage (``stages: 4``) has stride 16 without dilation and
            half the compute of the whole network dilated to stride 16.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 3,
        weights: str | None = None,
        adl_stages: Sequence[int] = (3, 4),
        drop_rate: float = 0.75,
        drop_threshold: float = 0.9,
        output_stride: int = 16,
        input_scale: float = 1.0,
        stages: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < input_scale <= 4.0:
            raise ValueError(f"input_scale must be in (0, 4], got {input_scale}")
        self.input_scale = input_scale
        kwargs: dict = {"output_stride": output_stride} if output_stride != 32 else {}
        if stages is not None:
            kwargs["out_indices"] = tuple(range(stages))
        self.backbone = timm.create_model(backbone, pretrained=False, features_only=True, **kwargs)
        if weights is not None:
            load_backbone_weights(self.backbone, weights)
        names = self.backbone.feature_info.module_name()
        stages = [int(i) for i in adl_stages]
        if any(not 0 <= i < len(names) for i in stages):
            raise ValueError(f"adl_stages must be in 0..{len(names) - 1}, got {stages}")
        self.adl = nn.ModuleList(AttentionDropout(drop_rate, drop_threshold) for _ in stages)
        modules = dict(self.backbone.named_modules())
        for layer, index in zip(self.adl, stages, strict=True):
            # A forward hook that returns a tensor replaces the stage's output: ADL sits
            # between stages without rewriting the backbone's forward.
            modules[names[index]].register_forward_hook(lambda _m, _i, out, f=layer: f(out))
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(self.backbone.feature_info.channels()[-1], num_classes, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> logits (B, K) and raw class maps (B, K, h, w), h = H x
        ``input_scale`` / stride."""
        if self.input_scale != 1.0:
            images = F.interpolate(
                images, scale_factor=self.input_scale, mode="bilinear", antialias=True
            )
        maps = self.classifier(self.backbone(images)[-1])
        return maps.mean(dim=(2, 3)), maps

    @staticmethod
    def normalise_cams(maps: torch.Tensor) -> torch.Tensor:
        """Raw maps -> CAMs in [0, 1] (:func:`normalise_cams`)."""
        return normalise_cams(maps)


def normalise_cams(maps: torch.Tensor) -> torch.Tensor:
    """Raw class maps (..., K, h, w) -> ReLU'd maps scaled so each map's maximum is 1."""
    maps = F.relu(maps)
    return maps / maps.flatten(-2).amax(dim=-1)[..., None, None].clamp_min(1e-5)


@torch.no_grad()
def rotation_averaged_cams(
    net: nn.Module, images: torch.Tensor, rotations: int = 4, flips: bool = False
) -> torch.Tensor:
    """Class maps averaged over 90-degree turns (EPLC-SAM's test-time averaging).

    Each view's raw maps are turned back, upsampled to the image size and averaged; the mean
    is normalised by the net's ``normalise_cams`` (:class:`CAMNet`: :func:`normalise_cams`).

    Args:
        net: a CAM network: ``net(images)`` -> (logits, raw maps), ``num_classes`` and
            ``normalise_cams`` (:class:`CAMNet`,
            :class:`~protoseg.modules.frozen_heads.EncoderCAMNet`).
        images: (B, 3, H, W) normalised.
        rotations: 1 (none) to 4 turns.
        flips: also average the horizontally flipped views.

    Returns:
        (B, K, H, W) float32 in [0, 1], each map's maximum 1 (0 maps stay 0).
    """
    if not 1 <= rotations <= 4:
        raise ValueError(f"rotations must be 1 to 4, got {rotations}")
    height, width = images.shape[-2:]
    total = torch.zeros(images.shape[0], net.num_classes, height, width, device=images.device)
    views = [(k, False) for k in range(rotations)]
    views += [(k, True) for k in range(rotations)] if flips else []
    for turns, flip in views:
        view = images.flip(-1) if flip else images
        _, maps = net(torch.rot90(view, turns, dims=(-2, -1)))
        maps = torch.rot90(maps.float(), -turns, dims=(-2, -1))
        maps = maps.flip(-1) if flip else maps
        total += F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
    return net.normalise_cams(total / len(views))


def bright_background(image: np.ndarray, brightness: float = 215.0) -> np.ndarray:
    """(H, W) bool: glass and other bright, unstained pixels of an (H, W, 3) uint8 image.

    A pixel is background when even its darkest channel is at least ``brightness``: H&E
    stains every tissue pixel in at least one channel, glass in none.
    """
    return image.min(axis=2) >= brightness
