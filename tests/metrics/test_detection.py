"""Detection matching and scores against a brute-force reference on tiny inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from protoseg.metrics.detection import (
    DetectionMetrics,
    detection_counts,
    detection_scores,
    match_points,
)


def brute_force_matches(pred: np.ndarray, target: np.ndarray, radius: float) -> int:
    """Largest number of one-to-one pairs within ``radius``, by trying every injection."""
    n, m = len(pred), len(target)
    if n == 0 or m == 0:
        return 0
    best = 0
    small, large, swap = (pred, target, False) if n <= m else (target, pred, True)
    for chosen in itertools.permutations(range(len(large)), len(small)):
        count = 0
        for i, j in enumerate(chosen):
            a, b = (large[j], small[i]) if swap else (small[i], large[j])
            count += float(np.hypot(*(a - b))) <= radius
        best = max(best, count)
    return best


def test_hungarian_matching_equals_brute_force_on_random_tiny_sets() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        pred = rng.uniform(0, 12, size=(rng.integers(0, 5), 2))
        target = rng.uniform(0, 12, size=(rng.integers(0, 5), 2))
        radius = float(rng.uniform(1, 6))
        pairs = match_points(pred, target, radius)
        assert len(pairs) == brute_force_matches(pred, target, radius)
        assert len({i for i, _ in pairs}) == len(pairs) == len({j for _, j in pairs})
        for i, j in pairs:
            assert np.linalg.norm(pred[i] - target[j]) <= radius


def test_optimal_matching_beats_greedy_nearest_first() -> None:
    # Greedy pairs pred 0 with its nearest target 0 and leaves pred 1 alone; two pairs exist.
    pred = np.array([[0.0, 0.0], [-4.0, 0.0]])
    target = np.array([[1.0, 0.0], [5.5, 0.0]])
    assert sorted(match_points(pred, target, 6.0)) == [(0, 1), (1, 0)]
    assert detection_counts(pred, target, 6.0) == (2, 0, 0)


def test_scores_and_empty_cases() -> None:
    assert detection_scores(3, 1, 2) == pytest.approx(
        {"precision": 0.75, "recall": 0.6, "f1": 6 / 9}
    )
    assert detection_scores(0, 0, 0) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert detection_counts(np.zeros((0, 2)), np.ones((3, 2)), 5.0) == (0, 0, 3)
    with pytest.raises(ValueError, match="radius"):
        match_points(np.zeros((1, 2)), np.zeros((1, 2)), -1.0)


def test_metric_matches_only_within_a_class_and_sums_over_images() -> None:
    metric = DetectionMetrics(num_classes=2, radius=3.0, prefix="val/")
    # Image 1: one cell found with the right class, one with the wrong class.
    metric.update(
        [torch.tensor([[10.0, 10.0], [30.0, 30.0]])],
        [torch.tensor([[11.0, 10.0], [30.0, 31.0]])],
        [torch.tensor([0, 0])],
        [torch.tensor([0, 1])],
    )
    # Image 2: a positive cell missed.
    metric.update(
        [torch.zeros((0, 2))], [torch.tensor([[5.0, 5.0]])], [torch.zeros(0)], [torch.tensor([1])]
    )
    out = metric.compute()
    # class 0: tp 1, fp 1, fn 0 -> P 0.5, R 1, F1 2/3; class 1: tp 0, fp 0, fn 2 -> P 1, R 0, F1 0.
    assert out["val/f1_class0"].item() == pytest.approx(2 / 3)
    assert out["val/f1_class1"].item() == pytest.approx(0.0)
    assert out["val/precision_class0"].item() == pytest.approx(0.5)
    assert out["val/recall_class0"].item() == pytest.approx(1.0)
    assert out["val/precision_class1"].item() == pytest.approx(1.0)
    assert out["val/recall_class1"].item() == pytest.approx(0.0)
    assert out["val/precision"].item() == pytest.approx(0.75)
    assert out["val/recall"].item() == pytest.approx(0.5)
    assert out["val/f1"].item() == pytest.approx(1 / 3)


def test_metric_rejects_bad_classes() -> None:
    metric = DetectionMetrics(num_classes=2)
    with pytest.raises(ValueError, match="class ids"):
        metric.update([torch.zeros((1, 2))], [torch.zeros((1, 2))], [torch.tensor([2])], None)
