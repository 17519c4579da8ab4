"""Tissue metrics against an independent numpy computation and torchmetrics' own classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from protoseg.metrics.tissue import TissueMetrics, scored_confusion, tissue_scores

NAMES = ("tumor", "stroma", "normal")


def reference_scores(
    preds: list[np.ndarray], targets: list[np.ndarray], n: int
) -> dict[str, float]:
    """The WSSS papers' formulas, written out with a bincount over the whole set: truth
    outside 0..n-1 left out, predictions outside it one extra "miss" column."""
    hist = np.zeros((n, n + 1))
    for pred, target in zip(preds, targets, strict=True):
        keep = (target >= 0) & (target < n)
        p = np.where((pred >= 0) & (pred < n), pred, n)[keep].astype(np.int64)
        t = target[keep].astype(np.int64)
        hist += np.bincount(t * (n + 1) + p, minlength=n * (n + 1)).reshape(n, n + 1)
    tp = np.diag(hist[:, :n])
    iou = tp / (hist.sum(1) + hist[:, :n].sum(0) - tp)
    freq = hist.sum(1) / hist.sum()
    out = {f"iou_{name}": iou[i] for i, name in enumerate(NAMES[:n])}
    out["miou"] = np.nanmean(iou)
    out["fwiou"] = (freq[freq > 0] * iou[freq > 0]).sum()
    out["pixel_accuracy"] = tp.sum() / hist.sum()
    out["coverage"] = hist[:, :n].sum() / hist.sum()
    return out


def random_maps(seed: int, count: int = 4) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Predictions in 0..3 and 255 (background, unsure), truth in 0..3 (3 = background)."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for i in range(count):
        shape = (17 + i, 23 - i)
        target = rng.integers(0, 4, shape)
        pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, 4, shape))
        pred[rng.random(shape) < 0.05] = 255
        preds.append(pred.astype(np.uint8))
        targets.append(target.astype(np.uint8))
    return preds, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_whole_set_scores_match_the_independent_computation(seed: int) -> None:
    preds, targets = random_maps(seed)
    metric = TissueMetrics(NAMES, prefix="val/")
    for pred, target in zip(preds, targets, strict=True):
        metric.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
    got = metric.compute()
    expected = reference_scores(preds, targets, 3)
    assert set(got) == {f"val/{key}" for key in expected}
    for key, value in expected.items():
        assert got[f"val/{key}"] == pytest.approx(value, abs=1e-12), key


def test_per_class_iou_fwiou_and_accuracy_match_torchmetrics() -> None:
    """Predictions in 0..3, truth in 0..2: torchmetrics' Jaccard over 4 classes (the 4th the
    background prediction, never true) gives our per-class IoU and FwIoU (support-weighted),
    its micro accuracy our pixel accuracy."""
    rng = np.random.default_rng(5)
    target = torch.from_numpy(rng.integers(0, 3, (3, 20, 20)))
    pred = torch.where(torch.rand(3, 20, 20) < 0.7, target, torch.randint(0, 4, (3, 20, 20)))
    ours = tissue_scores(scored_confusion(pred, target, 3).numpy(), NAMES)
    per_class = MulticlassJaccardIndex(4, average="none")(pred, target)
    weighted = MulticlassJaccardIndex(4, average="weighted")(pred, target)
    accuracy = MulticlassAccuracy(4, average="micro")(pred, target)
    for i, name in enumerate(NAMES):
        assert ours[f"iou_{name}"] == pytest.approx(float(per_class[i]), abs=1e-6)
    assert ours["fwiou"] == pytest.approx(float(weighted), abs=1e-6)
    assert ours["pixel_accuracy"] == pytest.approx(float(accuracy), abs=1e-6)


def test_hand_computed_example_and_background_left_out() -> None:
    # truth: tumor x2, stroma x2, background x2 (code 3); the background pixels' predictions
    # do not count, an unsure (255) prediction on a stroma pixel misses it.
    target = torch.tensor([[0, 0, 1, 1, 3, 3]])
    pred = torch.tensor([[0, 1, 1, 255, 0, 2]])
    scores = tissue_scores(scored_confusion(pred, target, 3), NAMES)
    assert scores["iou_tumor"] == pytest.approx(1 / 2)  # 1 hit / (2 true + 1 predicted - 1)
    assert scores["iou_stroma"] == pytest.approx(1 / 3)  # 1 / (2 + 2 - 1)
    assert math.isnan(scores["iou_normal"])  # neither true nor predicted on scored pixels
    assert scores["miou"] == pytest.approx(5 / 12)  # normal left out of the mean
    assert scores["fwiou"] == pytest.approx(5 / 12)  # tumor and stroma half the pixels each
    assert scores["pixel_accuracy"] == pytest.approx(2 / 4)
    assert scores["coverage"] == pytest.approx(3 / 4)


def test_the_set_is_pooled_not_averaged_over_images() -> None:
    """A small image that is all wrong weighs by its pixels, not as one image of two."""
    big_t, big_p = torch.zeros(1, 10, 10, dtype=torch.long), torch.zeros(1, 10, 10)
    small_t, small_p = torch.ones(1, 1, 1, dtype=torch.long), torch.zeros(1, 1, 1)
    metric = TissueMetrics(NAMES)
    metric.update(big_p, big_t)
    metric.update(small_p, small_t)
    assert metric.compute()["pixel_accuracy"] == pytest.approx(100 / 101)


def test_no_scored_pixel_gives_nan_and_shape_mismatch_raises() -> None:
    metric = TissueMetrics(NAMES)
    metric.update(torch.zeros(4, 4), torch.full((4, 4), 3))
    assert math.isnan(metric.compute()["miou"])
    with pytest.raises(ValueError, match="differ"):
        scored_confusion(torch.zeros(2, 3), torch.zeros(3, 2), 3)
    with pytest.raises(ValueError, match="confusion must be"):
        tissue_scores(np.zeros((5, 5)), NAMES)
