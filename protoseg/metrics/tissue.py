"""Tissue segmentation metrics: one confusion matrix over the whole set, background excluded.

The WSSS papers' convention (LUAD-HistoSeg's ``tool/metrics.py``, BCSS-WSSS, WSSS4LUAD): the
pixels of every image are counted into one confusion matrix, pixels whose true class is the
background (or unsure) are left out, and per-class IoU, their mean (mIoU), the
frequency-weighted IoU (FwIoU) and pixel accuracy are read from it. Predictions other than a
scored class (background, unsure) at scored pixels count against the true class: a pseudo mask
that leaves pixels unsure pays for them.

Class indices are those of :class:`~protoseg.io.class_maps.TissueClasses`: ``0 .. C-1`` the
scored classes; any other value (background ``C``, ``ignore_index``) is not scored as truth and
is the column "other" as a prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import multiclass_confusion_matrix

#: Names of the whole-set scores :func:`tissue_scores` returns beside ``iou_<class>``.
SCORE_NAMES = ("miou", "fwiou", "pixel_accuracy", "coverage")


def scored_confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C + 1, C + 1) int64 confusion counts of class-index maps of one shape, rows the
    truth, columns the prediction; truth outside ``0 .. C-1`` is left out and predictions
    outside it go to column ``C`` (row ``C`` stays zero). Counted by torchmetrics'
    ``multiclass_confusion_matrix``."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    pred, target = pred.long().flatten(), target.long().flatten()
    other = torch.full_like(pred, num_classes)
    pred = torch.where((pred >= 0) & (pred < num_classes), pred, other)
    target = torch.where((target >= 0) & (target < num_classes), target, -1)
    return multiclass_confusion_matrix(
        pred, target, num_classes + 1, ignore_index=-1, validate_args=False
    ).long()


def tissue_scores(confusion: np.ndarray | torch.Tensor, class_names: Sequence[str]) -> dict:
    """Per-class IoU, mIoU, FwIoU, pixel accuracy and coverage of a confusion matrix.

    Args:
        confusion: (C + 1, C + 1) counts from :func:`scored_confusion` (summed over images),
            or (C, C) of the scored classes alone.
        class_names: the C class names (keys ``iou_<name>``).

    Returns:
        ``iou_<name>`` per class (NaN for a class neither present nor predicted), ``miou``
        (their mean over the classes that are not NaN), ``fwiou`` (IoUs weighted by each
        class's share of the scored pixels), ``pixel_accuracy`` and ``coverage`` (share of
        scored pixels predicted as some scored class: below 1 where a pseudo mask is unsure).
        Every value is NaN when no pixel was scored.
    """
    matrix = np.asarray(confusion, dtype=np.float64)
    n = len(class_names)
    if matrix.shape not in ((n, n), (n + 1, n + 1)):
        raise ValueError(f"confusion must be ({n}, {n}) or ({n + 1}, {n + 1}), got {matrix.shape}")
    rows = matrix[:n]
    truth = rows.sum(axis=1)
    predicted = rows[:, :n].sum(axis=0)
    hits = np.diag(rows[:, :n])
    total = truth.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = hits / (truth + predicted - hits)
    scores = {f"iou_{name}": float(value) for name, value in zip(class_names, iou, strict=True)}
    if total == 0:
        return {**scores, **dict.fromkeys(SCORE_NAMES, float("nan"))}
    frequency = truth / total
    present = frequency > 0
    scores["miou"] = float(np.nanmean(iou)) if not np.isnan(iou).all() else float("nan")
    scores["fwiou"] = float((frequency[present] * iou[present]).sum())
    scores["pixel_accuracy"] = float(hits.sum() / total)
    scores["coverage"] = float(predicted.sum() / total)
    return scores


class TissueMetrics(Metric):
    """:func:`tissue_scores` of a confusion matrix accumulated over every image of the set.

    The matrix is a sum-reduced state, so under DDP ``compute`` scores the images of every
    process together (each image once: see ``evaluation_sampler``).

    Args:
        class_names: the C scored classes; class indices ``0 .. C-1``.
        prefix: prepended to every key, e.g. ``"val/"`` gives ``"val/miou"``.

    Example:
        >>> metric = TissueMetrics(["tumor", "stroma", "normal"], prefix="val/")
        >>> metric.update(pred, mask)  # class-index maps of one shape, (B, H, W) or (H, W)
        >>> metric.compute()["val/miou"]
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, class_names: Sequence[str], prefix: str = "") -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        self.prefix = prefix
        size = len(self.class_names) + 1
        self.add_state("confusion", torch.zeros(size, size, dtype=torch.long), "sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds class-index maps of one shape (``pred`` and ``target`` alike)."""
        counts = scored_confusion(pred, target, len(self.class_names))
        self.confusion += counts.to(self.confusion.device)

    def compute(self) -> dict[str, float]:
        scores = tissue_scores(self.confusion.cpu().numpy(), self.class_names)
        return {f"{self.prefix}{key}": value for key, value in scores.items()}
