"""Dense linear probe: frozen backbone features -> 1x1 conv predicting the nuclei mask.

The probe measures how linearly a frozen encoder's dense features separate nuclei from the
rest, the way a linear probe measures a classifier's features (Kang et al., CVPR 2023, probe
classification; they do not define a dense probe, so the choices below are ours):

- **Features**: timm ``forward_intermediates`` of the stages ``indices`` (ResNet 1, 2, 3:
  strides 4, 8, 16, 448 channels for ResNet-18), each resampled to one grid of ``stride`` px
  (area averaging for finer maps, bilinear for coarser ones) and concatenated. The deepest
  stage (stride 32) is left out by default: nuclei are ~10-20 px wide at 40x. Images are
  padded (with zeros, the mean colour after normalisation) to a multiple of the coarsest
  stride so that every map aligns with the grid.
- **Head**: ``BatchNorm2d(C, affine=False)`` then ``Conv2d(C, 1, 1)``. The normalisation
  puts channels of very different scales on one footing; at evaluation it is a fixed affine
  map, so the probe stays linear.
- **Targets and loss**: the nuclei fraction of each grid cell (the area-downsampled mask) as
  a soft target of a binary cross-entropy on the grid, weighted by the cell's share of real
  (not padded) pixels: cheap at any image size, and the same loss whether the head is fitted
  on precomputed whole-image features (:func:`fit_linear_probe`) or on random crops.
- **Prediction**: grid logits are upsampled bilinearly to the image (a linear map, so this
  equals a 1x1 conv of upsampled features), nuclei where the logit is > 0 (p > 0.5).
- **Fitting on precomputed features**: channel statistics are the exact mean and variance
  of the training cells; the conv is fitted by full-batch L-BFGS (deterministic, no learning
  rate to tune) with an L2 penalty.
- **Dice**: pixel Dice of prediction and ``instances > 0`` pooled over all held-out pixels
  (one count over the set, not a mean of per-image scores).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DenseFeatures(nn.Module):
    """Frozen dense features of a timm model: images (B, 3, H, W) -> (B, C, H'/s, W'/s).

    ``H'``, ``W'`` are the image sides padded up to a multiple of :attr:`multiple`. The
    model is put in eval mode and stays there (``train()`` does not reach it), its
    parameters do not require gradients and the forward runs without autograd: nothing the
    probe does can change it.

    Args:
        model: a timm model with ``feature_info`` and ``forward_intermediates`` (e.g.
            :attr:`protoseg.modules.backbones.TimmBackbone.model`). Pass a copy to keep the
            original trainable elsewhere.
        indices: entries of ``model.feature_info`` to take (timm stage indices).
        stride: px per cell of the output grid.
    """

    def __init__(self, model: nn.Module, indices: Sequence[int] = (1, 2, 3), stride: int = 8):
        super().__init__()
        info = getattr(model, "feature_info", None)
        if info is None or not hasattr(model, "forward_intermediates"):
            raise TypeError(f"{type(model).__name__}: not a timm model with forward_intermediates")
        if not indices or max(indices) >= len(info) or min(indices) < 0:
            raise ValueError(f"indices {tuple(indices)} out of range for {len(info)} stages")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.model = model.eval().requires_grad_(False)
        self.indices = list(indices)
        self.stride = stride
        self.reductions = [int(info[i]["reduction"]) for i in self.indices]
        self.num_channels: int = sum(int(info[i]["num_chs"]) for i in self.indices)
        self.multiple = max(max(self.reductions), stride)

    def train(self, mode: bool = True) -> DenseFeatures:
        # Frozen means BatchNorm keeps its running statistics too.
        return super().train(False)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """Sides padded up to a multiple of :attr:`multiple`."""
        m = self.multiple
        return -(-height // m) * m, -(-width // m) * m

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> features (B, C, H'/stride, W'/stride)."""
        height, width = images.shape[-2:]
        padded_h, padded_w = self.padded_size(height, width)
        images = F.pad(images, (0, padded_w - width, 0, padded_h - height))
        maps = self.model.forward_intermediates(
            images, indices=self.indices, intermediates_only=True
        )
        grid = (padded_h // self.stride, padded_w // self.stride)
        resampled = []
        for feature in maps:
            if feature.shape[-2] > grid[0]:
                feature = F.interpolate(feature, size=grid, mode="area")
            elif feature.shape[-2] < grid[0]:
                feature = F.interpolate(feature, size=grid, mode="bilinear", align_corners=False)
            resampled.append(feature)
        return torch.cat(resampled, dim=1)


class LinearProbeHead(nn.Module):
    """Channel standardisation and a 1x1 conv: features (B, C, h, w) -> logits (B, 1, h, w).

    The BatchNorm has no affine part and a cumulative average (``momentum=None``), so its
    running statistics become the exact mean and variance of everything it saw in training.

    Args:
        num_channels: C.
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_channels, affine=False, momentum=None)
        self.conv = nn.Conv2d(num_channels, 1, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, 1, h, w)."""
        return self.conv(self.norm(features))


def mask_to_grid(
    masks: torch.Tensor, stride: int, padded_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft grid targets of binary masks, as :class:`DenseFeatures` lays out its grid.

    Args:
        masks: (B, H, W) bool or {0, 1} nuclei masks.
        stride: px per grid cell.
        padded_size: (H', W'), multiples of ``stride`` and >= (H, W).

    Returns:
        ``target`` (B, 1, H'/s, W'/s): nuclei fraction of the real pixels of each cell, and
        ``weight`` (B, 1, H'/s, W'/s): share of each cell's pixels that are real (not padding).
    """
    height, width = masks.shape[-2:]
    pad = (0, padded_size[1] - width, 0, padded_size[0] - height)
    valid = F.pad(torch.ones_like(masks, dtype=torch.float32), pad)[:, None]
    mask = F.pad(masks.float(), pad)[:, None]
    weight = F.avg_pool2d(valid, stride)
    target = F.avg_pool2d(mask, stride) / weight.clamp_min(1e-6)
    return target.clamp(0.0, 1.0), weight


def probe_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of grid logits against soft targets, a weighted mean over cells.

    Args:
        logits: (B, 1, h, w).
        target: (B, 1, h, w) in [0, 1].
        weight: (B, 1, h, w) >= 0; cells of weight 0 do not count.
    """
    total = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    return total / weight.sum().clamp_min(1e-6)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int], stride: int) -> torch.Tensor:
    """Grid logits (B, 1, h, w) -> pixel logits (B, 1, H, W): bilinear to (h s, w s), cropped."""
    full = F.interpolate(
        logits,
        size=(logits.shape[-2] * stride, logits.shape[-1] * stride),
        mode="bilinear",
        align_corners=False,
    )
    return full[..., : size[0], : size[1]]


def dice_counts(prediction: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """(|P and T|, |P| + |T|) of two boolean masks of one shape: pool them, then Dice = 2a/b."""
    prediction, target = prediction.bool(), target.bool()
    return int((prediction & target).sum()), int(prediction.sum() + target.sum())


def dice_from_counts(intersection: int, total: int) -> float:
    """Pooled Dice ``2 |P and T| / (|P| + |T|)``; 1.0 when both are empty."""
    return 2.0 * intersection / total if total else 1.0


def fit_linear_probe(
    features: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    stride: int,
    steps: int = 100,
    weight_decay: float = 1e-4,
) -> LinearProbeHead:
    """Fits a :class:`LinearProbeHead` on precomputed features of whole images.

    Args:
        features: per image (1, C, h, w), from :class:`DenseFeatures` (the same ``stride``).
        masks: per image (H, W) bool nuclei masks, with ``h * stride >= H``.
        stride: the features' grid stride.
        steps: L-BFGS iterations (full batch).
        weight_decay: L2 penalty on the conv weights (on standardised features).

    Returns:
        The head in eval mode, on the features' device.
    """
    rows, targets, weights = [], [], []
    for feature, mask in zip(features, masks, strict=True):
        grid = (feature.shape[-2] * stride, feature.shape[-1] * stride)
        target, weight = mask_to_grid(mask[None].to(feature.device), stride, grid)
        keep = weight.flatten() > 0
        rows.append(feature[0].flatten(1).T[keep])
        targets.append(target.flatten()[keep])
        weights.append(weight.flatten()[keep])
    x, y, w = torch.cat(rows).float(), torch.cat(targets), torch.cat(weights)
    head = LinearProbeHead(x.shape[1]).to(x.device)
    mean, var = x.mean(dim=0), x.var(dim=0, unbiased=False)
    head.norm.running_mean.copy_(mean)
    head.norm.running_var.copy_(var)
    x = (x - mean) / torch.sqrt(var + head.norm.eps)
    weight = torch.zeros(x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros((), device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )
    total_weight = w.sum()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        bce = F.binary_cross_entropy_with_logits(x @ weight + bias, y, weight=w, reduction="sum")
        loss = bce / total_weight + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        head.conv.weight.copy_(weight.detach().view(1, -1, 1, 1))
        head.conv.bias.copy_(bias.detach().view(1))
    return head.eval()


@torch.no_grad()
def probe_dice(
    head: LinearProbeHead,
    features: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    stride: int,
) -> float:
    """Pooled pixel Dice of the head's nuclei (logit > 0) against ``masks`` (H, W) bool."""
    intersection = total = 0
    for feature, mask in zip(features, masks, strict=True):
        logits = upsample_logits(head(feature), tuple(mask.shape[-2:]), stride)
        counts = dice_counts(logits[0, 0] > 0, mask.to(logits.device))
        intersection, total = intersection + counts[0], total + counts[1]
    return dice_from_counts(intersection, total)


@torch.no_grad()
def linear_probe_dice(
    extractor: DenseFeatures,
    train: Sequence[tuple[torch.Tensor, torch.Tensor]],
    val: Sequence[tuple[torch.Tensor, torch.Tensor]],
    steps: int = 100,
    weight_decay: float = 1e-4,
) -> dict[str, float]:
    """The whole probe: features once, fit on ``train``, pooled Dice on ``val``.

    Args:
        extractor: frozen features.
        train: (image (3, H, W) normalised, mask (H, W) bool) pairs to fit the head on.
        val: held-out pairs to score.
        steps: L-BFGS iterations.
        weight_decay: L2 penalty of the head.

    Returns:
        ``{"dice": held-out Dice, "train_dice": Dice on the fitting images}``.
    """
    device = next(extractor.parameters()).device

    def featurise(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        # One image at a time: whole MoNuSeg images are 1000 px.
        return [extractor(image[None].to(device)) for image, _ in pairs]

    train_features = featurise(train)
    train_masks = [mask for _, mask in train]
    head = fit_linear_probe(train_features, train_masks, extractor.stride, steps, weight_decay)
    train_dice = probe_dice(head, train_features, train_masks, extractor.stride)
    del train_features
    val_dice = probe_dice(head, featurise(val), [mask for _, mask in val], extractor.stride)
    return {"dice": val_dice, "train_dice": train_dice}
