"""Cell detection scores: points matched to points within a distance, per cell class.

Matching is **one-to-one and optimal (Hungarian)**: among all pairings of predicted and
true points closer than ``radius`` px (distance <= radius), it takes one with the most
pairs, and among those the smallest summed distance (``scipy.optimize.linear_sum_assignment``
on the distances, with pairs farther than ``radius`` priced above any feasible total).
Greedy nearest-first matching can pair fewer points in crowded regions. With classes, only
points of the same class are matched (a cell found with the wrong class is a false positive
of that class and a false negative of the true one), as in BCData's per-class evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from torchmetrics import Metric


def _as_points(points: np.ndarray, name: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.size == 0:
        return points.reshape(0, 2)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{name} must be (N, 2) coordinates, got shape {points.shape}")
    return points


def match_points(pred: np.ndarray, target: np.ndarray, radius: float) -> list[tuple[int, int]]:
    """Optimal one-to-one pairs ``(i_pred, j_target)`` with distance <= ``radius``.

    Args:
        pred: (N, 2) predicted points.
        target: (M, 2) true points, same coordinate order as ``pred``.
        radius: largest distance of a match, px.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    pred, target = _as_points(pred, "pred"), _as_points(target, "target")
    if len(pred) == 0 or len(target) == 0:
        return []
    distance = cdist(pred, target)
    feasible = distance <= radius
    # Any infeasible pair costs more than every feasible assignment together, so the
    # optimum first maximises the number of feasible pairs, then minimises their distance.
    penalty = radius * (min(distance.shape) + 1) + 1.0
    cost = np.where(feasible, distance, penalty)
    rows, cols = linear_sum_assignment(cost)
    return [(int(i), int(j)) for i, j in zip(rows, cols, strict=True) if feasible[i, j]]


def detection_counts(pred: np.ndarray, target: np.ndarray, radius: float) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of one image and class."""
    pred, target = _as_points(pred, "pred"), _as_points(target, "target")
    tp = len(match_points(pred, target, radius))
    return tp, len(pred) - tp, len(target) - tp


def detection_scores(tp: float, fp: float, fn: float) -> dict[str, float]:
    """Precision, recall and F1; each is 1.0 when its denominator is 0 (nothing to find)."""
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"precision": precision, "recall": recall, "f1": f1}


class DetectionMetrics(Metric):
    """Detection precision / recall / F1 over a dataset, per class and averaged.

    TP/FP/FN are summed over images per class (a dataset-level count); ``compute`` returns
    ``precision``, ``recall``, ``f1`` averaged over classes (macro) and, with several
    classes, ``precision_class<c>``, ``recall_class<c>`` and ``f1_class<c>`` per class (a set
    whose points name one class only, e.g. BCData's positive cells, is read there). Under DDP
    the counts are summed over ranks.

    Args:
        num_classes: number of cell classes (1: class-agnostic detection).
        radius: largest distance of a match, px.
        prefix: prepended to every key (e.g. ``"val/"``).
    """

    full_state_update = False

    def __init__(self, num_classes: int = 1, radius: float = 6.0, prefix: str = "") -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.radius = radius
        self.prefix = prefix
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.zeros(num_classes, dtype=torch.float64), "sum")

    def update(
        self,
        preds: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor],
        pred_classes: Sequence[torch.Tensor] | None = None,
        target_classes: Sequence[torch.Tensor] | None = None,
    ) -> None:
        """Adds images: (N_i, 2) predicted and (M_i, 2) true points, optional class ids."""
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predicted images but {len(targets)} targets")
        for index, (pred, target) in enumerate(zip(preds, targets, strict=True)):
            pred_np = pred.detach().cpu().numpy().reshape(-1, 2)
            target_np = target.detach().cpu().numpy().reshape(-1, 2)
            p_cls = self._classes(pred_classes, index, len(pred_np))
            t_cls = self._classes(target_classes, index, len(target_np))
            for c in range(self.num_classes):
                tp, fp, fn = detection_counts(
                    pred_np[p_cls == c], target_np[t_cls == c], self.radius
                )
                self.tp[c] += tp
                self.fp[c] += fp
                self.fn[c] += fn

    def _classes(
        self, classes: Sequence[torch.Tensor] | None, index: int, count: int
    ) -> np.ndarray:
        if classes is None:
            return np.zeros(count, dtype=np.int64)
        values = classes[index].detach().cpu().numpy().reshape(-1).astype(np.int64)
        if len(values) != count:
            raise ValueError(f"image {index}: {len(values)} class ids for {count} points")
        if values.size and (values.min() < 0 or values.max() >= self.num_classes):
            raise ValueError(f"image {index}: class ids must be in [0, {self.num_classes})")
        return values

    def compute(self) -> dict[str, torch.Tensor]:
        per_class = [
            detection_scores(float(self.tp[c]), float(self.fp[c]), float(self.fn[c]))
            for c in range(self.num_classes)
        ]
        out = {
            f"{self.prefix}{key}": torch.tensor(float(np.mean([s[key] for s in per_class])))
            for key in ("precision", "recall", "f1")
        }
        if self.num_classes > 1:
            for c, scores in enumerate(per_class):
                for key, value in scores.items():
                    out[f"{self.prefix}{key}_class{c}"] = torch.tensor(value)
        return out
