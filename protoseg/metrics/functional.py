"""Per-image nuclei segmentation metrics on numpy instance maps.

Every instance metric is computed from one sparse contingency table of the two maps (the
pixel counts of each overlapping ``(target id, predicted id)`` pair, built with ``bincount`` /
``np.unique`` on paired labels), so a 1000x1000 MoNuSeg map with ~1000 nuclei costs a few
passes over the pixels rather than one full-size mask per pair of objects.

Conventions shared by all functions:

- Inputs are (H, W) maps of the same shape; a shape mismatch raises ``ValueError``.
- Instance maps hold non-negative integer (or bool) labels, 0 = background. Labels need not
  be consecutive: they are relabelled internally, in increasing order, so "ties go to the
  first object" means the object with the lowest label.
- When both maps are empty every score is 1.0 (nothing to find, nothing found); when exactly
  one is empty every score is 0.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "aggregated_jaccard_index",
    "nuclei_scores",
    "object_dice",
    "panoptic_quality",
    "pixel_dice",
    "pixel_iou",
]

# Labels below this are relabelled through a bincount lookup table (O(pixels), at most 8 MB);
# larger ids (e.g. hashed or 64-bit ids) fall back to a sort with np.unique.
#: The figures of :func:`nuclei_scores`, in the order tables list them.
METRIC_NAMES: tuple[str, ...] = ("pixel_dice", "pixel_iou", "object_dice", "aji", "dq", "sq", "pq")

_DENSE_LABEL_LIMIT = 1 << 20


def _check_pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Converts both maps to arrays and checks they are (H, W) maps of the same shape."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {pred.shape} "
            f"and target {target.shape}"
        )
    if pred.ndim != 2:
        raise ValueError(f"expected (H, W) maps, got shape {pred.shape}")
    return pred, target


def _relabel(inst: np.ndarray) -> tuple[np.ndarray, int]:
    """Maps the labels of an instance map to 0 (background) and 1..N in increasing order.

    Args:
        inst: instance map of any shape, integer or bool, 0 = background.

    Returns:
        The flattened relabelled map (H * W,) int64, and the number of objects N.
    """
    if inst.dtype == np.bool_:
        return inst.ravel().astype(np.int64), int(inst.any())
    if not np.issubdtype(inst.dtype, np.integer):
        raise TypeError(f"instance maps must hold integer labels, got dtype {inst.dtype}")
    flat = inst.ravel()
    if flat.size == 0:
        return flat.astype(np.int64), 0
    if flat.min() < 0:
        raise ValueError("instance labels must be non-negative (0 = background)")
    if flat.max() < _DENSE_LABEL_LIMIT:
        flat = flat.astype(np.intp, copy=False)
        present = np.bincount(flat) > 0
        present[0] = False
        # cumsum turns "label v is present" into its rank among present labels; 0 stays 0.
        lookup = np.cumsum(present)
        return lookup[flat], int(lookup[-1])
    uniques, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    if uniques[0] != 0:
        inverse += 1
    return inverse, int(np.count_nonzero(uniques))


@dataclass(frozen=True)
class _Overlap:
    """Sparse contingency table of two instance maps.

    Object k of either map is index k - 1 after relabelling. Only pairs with a non-empty
    intersection are listed, sorted by target index then predicted index.

    Attributes:
        target_area: pixel count of each target object (T,).
        pred_area: pixel count of each predicted object (P,).
        target_idx: target object of each overlapping pair (K,).
        pred_idx: predicted object of each overlapping pair (K,).
        intersection: pixel count of each pair's intersection (K,).
    """

    target_area: np.ndarray
    pred_area: np.ndarray
    target_idx: np.ndarray
    pred_idx: np.ndarray
    intersection: np.ndarray

    @property
    def union(self) -> np.ndarray:
        """Pixel count of each pair's union (K,)."""
        return self.target_area[self.target_idx] + self.pred_area[self.pred_idx] - self.intersection


def _overlap(pred_inst: np.ndarray, target_inst: np.ndarray) -> _Overlap:
    """Builds the sparse contingency table of two checked (H, W) instance maps."""
    pred, num_pred = _relabel(pred_inst)
    target, num_target = _relabel(target_inst)
    pred_area = np.bincount(pred, minlength=num_pred + 1)[1:]
    target_area = np.bincount(target, minlength=num_target + 1)[1:]
    both = (pred > 0) & (target > 0)
    # One int64 code per overlapping pixel; np.unique both counts and sorts the pairs.
    codes, intersection = np.unique(target[both] * (num_pred + 1) + pred[both], return_counts=True)
    return _Overlap(
        target_area=target_area,
        pred_area=pred_area,
        target_idx=codes // (num_pred + 1) - 1,
        pred_idx=codes % (num_pred + 1) - 1,
        intersection=intersection,
    )


def _best_pair_per_object(group: np.ndarray, other: np.ndarray, score: np.ndarray) -> np.ndarray:
    """For each object in ``group``, the pair with the highest score, ties to the lowest ``other``.

    Args:
        group: object of each pair whose best partner is sought (K,).
        other: the partner object of each pair (K,).
        score: the score to maximise (K,).

    Returns:
        Indices into the pairs (M,), one per distinct object of ``group``.
    """
    if group.size == 0:
        return np.zeros(0, dtype=np.intp)
    order = np.lexsort((other, -score, group))
    sorted_group = group[order]
    first = np.ones(sorted_group.size, dtype=bool)
    first[1:] = sorted_group[1:] != sorted_group[:-1]
    return order[first]


def pixel_dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice (F1) of the foregrounds ``pred > 0`` and ``target > 0``.

    Args:
        pred: predicted instance map or binary mask (H, W).
        target: ground-truth instance map or binary mask (H, W).

    Returns:
        ``2 |A ∩ B| / (|A| + |B|)``; 1.0 when both foregrounds are empty.
    """
    pred, target = _check_pair(pred, target)
    pred_fg, target_fg = pred > 0, target > 0
    total = int(pred_fg.sum()) + int(target_fg.sum())
    return 2.0 * int((pred_fg & target_fg).sum()) / total if total else 1.0


def pixel_iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Jaccard index (IoU) of the foregrounds ``pred > 0`` and ``target > 0``.

    Args:
        pred: predicted instance map or binary mask (H, W).
        target: ground-truth instance map or binary mask (H, W).

    Returns:
        ``|A ∩ B| / |A ∪ B|``; 1.0 when both foregrounds are empty.
    """
    pred, target = _check_pair(pred, target)
    pred_fg, target_fg = pred > 0, target > 0
    union = int((pred_fg | target_fg).sum())
    return int((pred_fg & target_fg).sum()) / union if union else 1.0


def _object_dice(table: _Overlap) -> float:
    total_target, total_pred = int(table.target_area.sum()), int(table.pred_area.sum())
    if total_target == 0 and total_pred == 0:
        return 1.0
    pair_dice = (
        2.0
        * table.intersection
        / (table.target_area[table.target_idx] + table.pred_area[table.pred_idx])
    )
    # "Maximally overlaps" in GlaS means largest intersection (not largest IoU); objects with
    # no overlapping partner contribute Dice 0 and so are absent from both sums.
    best = _best_pair_per_object(table.target_idx, table.pred_idx, table.intersection)
    target_term = (
        float((table.target_area[table.target_idx[best]] * pair_dice[best]).sum()) / total_target
        if total_target
        else 0.0
    )
    best = _best_pair_per_object(table.pred_idx, table.target_idx, table.intersection)
    pred_term = (
        float((table.pred_area[table.pred_idx[best]] * pair_dice[best]).sum()) / total_pred
        if total_pred
        else 0.0
    )
    return 0.5 * (target_term + pred_term)


def object_dice(pred_inst: np.ndarray, target_inst: np.ndarray) -> float:
    """Object-level Dice of Sirinukunwattana et al. 2017 (GlaS challenge).

    ``0.5 * (sum_i w_i Dice(G_i, S*(G_i)) + sum_j w~_j Dice(G*(S_j), S_j))`` where ``w_i`` is
    the area of ground-truth object ``G_i`` over the total ground-truth area, ``w~_j`` likewise
    for predicted object ``S_j``, and ``S*(G_i)`` / ``G*(S_j)`` is the object of the other map
    with the largest intersection (ties to the lowest label). Unmatched objects count Dice 0.

    Args:
        pred_inst: predicted instance map (H, W), 0 = background.
        target_inst: ground-truth instance map (H, W), 0 = background.

    Returns:
        Object Dice in [0, 1].
    """
    return _object_dice(_overlap(*_check_pair(pred_inst, target_inst)))


def _aggregated_jaccard_index(table: _Overlap) -> float:
    union = table.union
    best = _best_pair_per_object(table.target_idx, table.pred_idx, table.intersection / union)
    matched_target_area = int(table.target_area[table.target_idx[best]].sum())
    used_pred = np.zeros(table.pred_area.size, dtype=bool)
    used_pred[table.pred_idx[best]] = True
    inter_sum = int(table.intersection[best].sum())
    # A predicted object chosen by several nuclei adds its area to U once per nucleus, as in
    # Kumar et al.; an unmatched nucleus (no overlap, best IoU 0) still adds its own area.
    unmatched_target_area = int(table.target_area.sum()) - matched_target_area
    unused_pred_area = int(table.pred_area[~used_pred].sum())
    union_sum = int(union[best].sum()) + unmatched_target_area + unused_pred_area
    return inter_sum / union_sum if union_sum else 1.0


def aggregated_jaccard_index(pred_inst: np.ndarray, target_inst: np.ndarray) -> float:
    """Aggregated Jaccard Index of Kumar et al. 2017 (IEEE TMI, MoNuSeg).

    Each ground-truth nucleus ``G_i`` is paired with the predicted nucleus ``S_j`` of maximum
    IoU (ties to the lowest label); ``|G_i ∩ S_j|`` is added to C and ``|G_i ∪ S_j|`` to U. A
    nucleus that overlaps no prediction adds only its area to U and uses no prediction (the
    convention of the MoNuSeg and HoVer-Net code). Every prediction never paired adds its area
    to U. AJI = C / U.

    Args:
        pred_inst: predicted instance map (H, W), 0 = background.
        target_inst: ground-truth instance map (H, W), 0 = background.

    Returns:
        AJI in [0, 1].
    """
    return _aggregated_jaccard_index(_overlap(*_check_pair(pred_inst, target_inst)))


def check_iou_threshold(iou_threshold: float) -> None:
    """Raises ``ValueError`` unless the PQ matching threshold lies in [0.5, 1)."""
    if not 0.5 <= iou_threshold < 1.0:
        # Below 0.5 a nucleus can exceed the threshold with two predictions, so matching would
        # need an assignment solver; IoU > 0.5 makes every match unique (Kirillov et al.).
        raise ValueError(f"iou_threshold must be in [0.5, 1), got {iou_threshold}")


def _panoptic_quality(table: _Overlap, iou_threshold: float) -> tuple[float, float, float]:
    num_target, num_pred = table.target_area.size, table.pred_area.size
    if num_target == 0 and num_pred == 0:
        return 1.0, 1.0, 1.0
    iou = table.intersection / table.union
    matched = iou > iou_threshold
    true_pos = int(matched.sum())
    false_pos, false_neg = num_pred - true_pos, num_target - true_pos
    dq = true_pos / (true_pos + 0.5 * false_pos + 0.5 * false_neg)
    sq = float(iou[matched].sum()) / true_pos if true_pos else 0.0
    return dq, sq, dq * sq


def panoptic_quality(
    pred_inst: np.ndarray, target_inst: np.ndarray, iou_threshold: float = 0.5
) -> tuple[float, float, float]:
    """Panoptic quality for one class of objects (Kirillov et al. 2019; HoVer-Net convention).

    A prediction and a nucleus match when their IoU exceeds ``iou_threshold`` (strictly, as in
    Graham et al. 2019); for thresholds >= 0.5 the matching is unique without a solver.
    ``DQ = TP / (TP + FP / 2 + FN / 2)``, ``SQ`` = mean IoU of the matches (0 without any),
    ``PQ = DQ * SQ``.

    Args:
        pred_inst: predicted instance map (H, W), 0 = background.
        target_inst: ground-truth instance map (H, W), 0 = background.
        iou_threshold: matching threshold in [0.5, 1).

    Returns:
        ``(dq, sq, pq)``; ``(1.0, 1.0, 1.0)`` when both maps are empty.

    Raises:
        ValueError: if ``iou_threshold`` is outside [0.5, 1).
    """
    check_iou_threshold(iou_threshold)
    return _panoptic_quality(_overlap(*_check_pair(pred_inst, target_inst)), iou_threshold)


def nuclei_scores(
    pred_inst: np.ndarray, target_inst: np.ndarray, iou_threshold: float = 0.5
) -> dict[str, float]:
    """All metrics of this module from one contingency table (what ``NucleiMetrics`` logs).

    Args:
        pred_inst: predicted instance map (H, W), 0 = background.
        target_inst: ground-truth instance map (H, W), 0 = background.
        iou_threshold: PQ matching threshold in [0.5, 1).

    Returns:
        Scores keyed ``pixel_dice, pixel_iou, object_dice, aji, dq, sq, pq``.
    """
    check_iou_threshold(iou_threshold)
    table = _overlap(*_check_pair(pred_inst, target_inst))
    # The foreground counts follow from the table: |A| and |B| are the summed object areas.
    inter = int(table.intersection.sum())
    pred_fg, target_fg = int(table.pred_area.sum()), int(table.target_area.sum())
    total, union = pred_fg + target_fg, pred_fg + target_fg - inter
    dq, sq, pq = _panoptic_quality(table, iou_threshold)
    return {
        "pixel_dice": 2.0 * inter / total if total else 1.0,
        "pixel_iou": inter / union if union else 1.0,
        "object_dice": _object_dice(table),
        "aji": _aggregated_jaccard_index(table),
        "dq": dq,
        "sq": sq,
        "pq": pq,
    }
