"""Segmentation losses: pure functions at the core, a thin module for configuration."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    eps: float = 1.0,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Multi-class soft Dice loss, averaged over classes (Milletari et al., 2016).

    Args:
        logits: raw scores (B, K, H, W).
        target: class ids (B, H, W), int64.
        eps: additive smoothing on numerator and denominator, so that a class absent from both
            prediction and target scores 1 instead of 0/0.
        ignore_index: pixels with this target id count for no class.

    Returns:
        Scalar ``1 - mean_k dice_k`` where dice is computed over the whole batch.
    """
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)
    valid = torch.ones_like(target, dtype=probs.dtype)
    if ignore_index is not None:
        valid = (target != ignore_index).to(probs.dtype)
        target = target.masked_fill(target == ignore_index, 0)
    one_hot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    valid = valid.unsqueeze(1)
    dims = (0, 2, 3)
    intersection = (probs * one_hot * valid).sum(dims)
    cardinality = ((probs + one_hot) * valid).sum(dims)
    dice = (2.0 * intersection + eps) / (cardinality + eps)
    return 1.0 - dice.mean()


def ce_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    dice_weight: float = 1.0,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Cross-entropy plus ``dice_weight`` times soft Dice; logits (B, K, H, W), target (B, H, W).

    Pixels whose target is ``ignore_index`` (e.g. unsure pixels of a pseudo mask) count in
    neither term; a batch with no other pixel gives a zero loss (with a gradient graph).
    """
    if ignore_index is None:
        ce = F.cross_entropy(logits.float(), target, weight=class_weights)
        return ce + dice_weight * soft_dice_loss(logits, target)
    if not (target != ignore_index).any():
        return logits.float().sum() * 0.0
    ce = F.cross_entropy(logits.float(), target, weight=class_weights, ignore_index=ignore_index)
    return ce + dice_weight * soft_dice_loss(logits, target, ignore_index=ignore_index)


class CEDiceLoss(nn.Module):
    """Configurable wrapper of :func:`ce_dice_loss` for constructor injection.

    Args:
        class_weights: per-class cross-entropy weights, e.g. ``[1, 1, 2]`` to stress the thin
            boundary class that separates touching nuclei.
        dice_weight: weight of the soft Dice term.
        ignore_index: target id of pixels that count for no class (a tissue pseudo mask's
            unsure pixels: 255).
    """

    def __init__(
        self,
        class_weights: list[float] | None = None,
        dice_weight: float = 1.0,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of logits (B, K, H, W) against class ids (B, H, W)."""
        return ce_dice_loss(logits, target, self.class_weights, self.dice_weight, self.ignore_index)
