"""Image-level labels of a multi-label classifier: class weights of its BCE and the per-class
decision thresholds it predicts labels with, both from the training images' labels."""

from __future__ import annotations

import numpy as np
import torch


def balanced_pos_weight(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(K,) float32 BCE ``pos_weight`` of (N, K) 0/1 image-level labels: per class, the images
    without it over the images with it (1 for a class that no image, or every image, holds)."""
    labels = np.asarray(labels, bool)
    positives = labels.sum(0)
    negatives = len(labels) - positives
    held = (positives > 0) & (negatives > 0)
    weight = np.where(held, negatives / np.maximum(positives, 1), 1.0)
    return torch.tensor(weight, dtype=torch.float32)


def midpoint_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(K,) per-class decision logits calibrated on labelled images: halfway between the
    highest logit of an image without the class and the lowest of an image with it.

    Args:
        logits: (N, K) the classifier's whole-image logits.
        labels: (N, K) 0/1 (or bool) image-level labels of the same images.

    Returns:
        (K,) float32; 0 (probability 0.5) for a class that no image, or every image, holds.
    """
    logits, held = logits.float(), labels.bool()
    if logits.shape != held.shape or logits.ndim != 2:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(held.shape)} differ")
    cut = torch.zeros(logits.shape[1])
    for k in range(logits.shape[1]):
        with_k, without_k = logits[held[:, k], k], logits[~held[:, k], k]
        if len(with_k) and len(without_k):
            cut[k] = (with_k.min() + without_k.max()) / 2
    return cut
