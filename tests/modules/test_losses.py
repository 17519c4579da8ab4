"""Losses against independent reference computations written from the formulas with NumPy loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from protoseg.modules.losses import CEDiceLoss, ce_dice_loss, soft_dice_loss


def reference_softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 1, one pixel at a time."""
    out = np.empty_like(logits, dtype=np.float64)
    b, k, h, w = logits.shape
    for n in range(b):
        for y in range(h):
            for x in range(w):
                z = logits[n, :, y, x].astype(np.float64)
                e = [math.exp(v - z.max()) for v in z]
                out[n, :, y, x] = np.array(e) / sum(e)
    return out


def reference_dice_loss(logits: np.ndarray, target: np.ndarray, eps: float = 1.0) -> float:
    """1 - mean over classes of (2 sum p*g + eps) / (sum p + sum g + eps), batch-wide sums."""
    probs = reference_softmax(logits)
    k = logits.shape[1]
    scores = []
    for c in range(k):
        p = probs[:, c]
        g = (target == c).astype(np.float64)
        scores.append((2 * (p * g).sum() + eps) / (p.sum() + g.sum() + eps))
    return 1.0 - float(np.mean(scores))


def reference_cross_entropy(logits: np.ndarray, target: np.ndarray, weights: np.ndarray) -> float:
    """Weighted mean of -log p_target: sum_i w_{y_i} (-log p_i) / sum_i w_{y_i} (PyTorch's rule)."""
    probs = reference_softmax(logits)
    num = den = 0.0
    b, _, h, w = logits.shape
    for n in range(b):
        for y in range(h):
            for x in range(w):
                c = target[n, y, x]
                num += weights[c] * -math.log(probs[n, c, y, x])
                den += weights[c]
    return num / den


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_dice_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(2, 3, 5, 4)).astype(np.float32) * 3
    target = rng.integers(0, 3, size=(2, 5, 4))
    ours = soft_dice_loss(torch.from_numpy(logits), torch.from_numpy(target)).item()
    assert ours == pytest.approx(reference_dice_loss(logits, target), rel=1e-5)


def test_soft_dice_perfect_prediction_is_near_zero() -> None:
    target = torch.tensor([[[0, 1], [2, 1]]])
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 100
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_dice_ignore_index_drops_pixels() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    target = rng.integers(0, 3, size=(1, 4, 4))
    masked = target.copy()
    masked[0, :, :2] = 255
    ours = soft_dice_loss(torch.from_numpy(logits), torch.from_numpy(masked), ignore_index=255)
    expected = reference_dice_loss(logits[..., 2:], target[..., 2:])
    assert ours.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("weights", [None, [1.0, 1.0, 2.0]])
def test_ce_dice_matches_reference(weights: list[float] | None) -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 3, 4, 3)).astype(np.float32) * 2
    target = rng.integers(0, 3, size=(2, 4, 3))
    w = np.ones(3) if weights is None else np.asarray(weights)
    expected = reference_cross_entropy(logits, target, w) + 0.5 * reference_dice_loss(
        logits, target
    )
    module = CEDiceLoss(class_weights=weights, dice_weight=0.5)
    ours = module(torch.from_numpy(logits), torch.from_numpy(target)).item()
    assert ours == pytest.approx(expected, rel=1e-5)
    functional = ce_dice_loss(
        torch.from_numpy(logits),
        torch.from_numpy(target),
        None if weights is None else torch.tensor(weights),
        0.5,
    )
    assert functional.item() == pytest.approx(expected, rel=1e-5)


def test_loss_backpropagates() -> None:
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    CEDiceLoss([1.0, 1.0, 2.0])(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_ce_dice_ignore_index_drops_unsure_pixels() -> None:
    """Unsure pixels (255) of a pseudo mask count in neither term: the loss equals the
    reference on the other pixels alone; an all-unsure batch gives 0 with a gradient."""
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    target = rng.integers(0, 3, size=(1, 4, 4))
    masked = target.copy()
    masked[0, :, :2] = 255
    weights = np.asarray([1.0, 2.0, 1.0])
    expected = reference_cross_entropy(
        logits[..., 2:], target[..., 2:], weights
    ) + reference_dice_loss(logits[..., 2:], target[..., 2:])
    module = CEDiceLoss(class_weights=weights.tolist(), ignore_index=255)
    ours = module(torch.from_numpy(logits), torch.from_numpy(masked))
    assert ours.item() == pytest.approx(expected, rel=1e-5)
    unsure = torch.full((1, 4, 4), 255)
    empty = module(torch.from_numpy(logits).requires_grad_(), unsure)
    assert empty.item() == 0.0 and empty.requires_grad
