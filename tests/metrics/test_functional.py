"""Per-image nuclei metrics against naive references written straight from the papers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.optimize import linear_sum_assignment

from protoseg.metrics import (
    aggregated_jaccard_index,
    nuclei_scores,
    object_dice,
    panoptic_quality,
    pixel_dice,
    pixel_iou,
)

# --- naive references: python loops over object ids and full boolean masks -----------------


def _object_ids(inst: np.ndarray) -> list[int]:
    return [int(v) for v in np.unique(inst) if v != 0]


def ref_pixel_dice(pred: np.ndarray, target: np.ndarray) -> float:
    a, b = pred > 0, target > 0
    return 1.0 if a.sum() + b.sum() == 0 else 2 * (a & b).sum() / (a.sum() + b.sum())


def ref_pixel_iou(pred: np.ndarray, target: np.ndarray) -> float:
    a, b = pred > 0, target > 0
    return 1.0 if (a | b).sum() == 0 else (a & b).sum() / (a | b).sum()


def ref_object_dice(pred: np.ndarray, target: np.ndarray) -> float:
    """GlaS (Sirinukunwattana et al. 2017, eq. 2): area-weighted Dice in both directions."""
    if not _object_ids(pred) and not _object_ids(target):
        return 1.0

    def one_direction(objects_map: np.ndarray, other_map: np.ndarray) -> float:
        total_area = (objects_map > 0).sum()
        value = 0.0
        for i in _object_ids(objects_map):
            obj = objects_map == i
            best, best_overlap = None, 0
            for j in _object_ids(other_map):  # increasing ids: strict > keeps the first on ties
                overlap = (obj & (other_map == j)).sum()
                if overlap > best_overlap:
                    best, best_overlap = j, overlap
            if best is not None:
                partner = other_map == best
                dice = 2 * (obj & partner).sum() / (obj.sum() + partner.sum())
                value += obj.sum() / total_area * dice
        return value

    return 0.5 * (one_direction(target, pred) + one_direction(pred, target))


def ref_aji(pred: np.ndarray, target: np.ndarray) -> float:
    """Kumar et al. 2017, Algorithm 1; an unmatched nucleus adds its area to U."""
    inter_sum, union_sum, used = 0, 0, set()
    for i in _object_ids(target):
        nucleus = target == i
        best, best_iou = None, 0.0
        for j in _object_ids(pred):
            candidate = pred == j
            iou = (nucleus & candidate).sum() / (nucleus | candidate).sum()
            if iou > best_iou:
                best, best_iou = j, iou
        if best is None:
            union_sum += nucleus.sum()
        else:
            inter_sum += (nucleus & (pred == best)).sum()
            union_sum += (nucleus | (pred == best)).sum()
            used.add(best)
    for j in _object_ids(pred):
        if j not in used:
            union_sum += (pred == j).sum()
    return 1.0 if union_sum == 0 else inter_sum / union_sum


def ref_pq(
    pred: np.ndarray, target: np.ndarray, threshold: float = 0.5
) -> tuple[float, float, float]:
    """Kirillov et al. 2019 via an explicit maximum-IoU assignment, then IoU > threshold."""
    gt_ids, pred_ids = _object_ids(target), _object_ids(pred)
    if not gt_ids and not pred_ids:
        return 1.0, 1.0, 1.0
    iou = np.zeros((len(gt_ids), len(pred_ids)))
    for a, i in enumerate(gt_ids):
        for b, j in enumerate(pred_ids):
            g, s = target == i, pred == j
            iou[a, b] = (g & s).sum() / (g | s).sum()
    rows, cols = linear_sum_assignment(-iou)
    matched = [iou[r, c] for r, c in zip(rows, cols, strict=True) if iou[r, c] > threshold]
    tp, fp, fn = len(matched), len(pred_ids) - len(matched), len(gt_ids) - len(matched)
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = sum(matched) / tp if tp else 0.0
    return dq, sq, dq * sq


# --- random instance maps --------------------------------------------------------------------


def random_instance_map(rng: np.random.Generator, size: int, num_objects: int) -> np.ndarray:
    """Rectangles and disks with random, non-consecutive ids; later ones occlude earlier ones."""
    inst = np.zeros((size, size), dtype=np.int64)
    yy, xx = np.mgrid[:size, :size]
    for label in rng.choice(np.arange(1, 100), size=num_objects, replace=False):
        cy, cx = rng.integers(0, size, size=2)
        if rng.random() < 0.5:
            h, w = rng.integers(3, size // 3 + 2, size=2)
            mask = (abs(yy - cy) <= h // 2) & (abs(xx - cx) <= w // 2)
        else:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(2, size // 6 + 2) ** 2
        inst[mask] = label
    return inst


def perturbed(rng: np.random.Generator, target: np.ndarray) -> np.ndarray:
    """A prediction that overlaps the target a lot: shifted, ids shuffled, objects edited."""
    pred = np.roll(target, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
    ids = _object_ids(pred)
    if len(ids) >= 2 and rng.random() < 0.5:  # merge two objects
        pred[pred == ids[1]] = ids[0]
    if ids and rng.random() < 0.5:  # miss one object
        pred[pred == ids[-1]] = 0
    if rng.random() < 0.5:  # a false positive, possibly cutting into true objects
        extra = random_instance_map(rng, target.shape[0], 1)
        pred[extra > 0] = 1000
    new_ids = rng.permutation(np.arange(1, 2000))[: pred.max() + 1]
    new_ids[0] = 0
    return new_ids[pred]


def random_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(2017)
    pairs = []
    for case in range(48):
        size = 16 if case % 2 else 32
        target = random_instance_map(rng, size, int(rng.integers(1, 9)) if case % 8 else 0)
        if case % 4 == 0:
            pred = random_instance_map(rng, size, int(rng.integers(0, 9)))
        else:
            pred = perturbed(rng, target)
        pairs.append((pred, target))
    return pairs


RANDOM_PAIRS = random_pairs()

SINGLE_METRICS: list[tuple[str, Callable[..., float], Callable[..., float]]] = [
    ("pixel_dice", pixel_dice, ref_pixel_dice),
    ("pixel_iou", pixel_iou, ref_pixel_iou),
    ("object_dice", object_dice, ref_object_dice),
    ("aji", aggregated_jaccard_index, ref_aji),
]
PQ_KEYS = ("dq", "sq", "pq")


def ref_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    scores = {name: ref(pred, target) for name, _, ref in SINGLE_METRICS}
    return {**scores, **dict(zip(PQ_KEYS, ref_pq(pred, target), strict=True))}


@pytest.mark.parametrize(
    ("fn", "ref"), [m[1:] for m in SINGLE_METRICS], ids=[m[0] for m in SINGLE_METRICS]
)
def test_matches_reference_on_random_maps(
    fn: Callable[..., float], ref: Callable[..., float]
) -> None:
    values = []
    for case, (pred, target) in enumerate(RANDOM_PAIRS):
        expected = ref(pred, target)
        assert fn(pred, target) == pytest.approx(expected, abs=1e-12), f"case {case}"
        values.append(expected)
    # The cases must span the range, or agreement would prove little.
    assert min(values) < 0.3 and max(values) == 1.0 and 0.3 < np.mean(values) < 0.95


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_panoptic_quality_matches_assignment_reference(threshold: float) -> None:
    matched_cases = 0
    for case, (pred, target) in enumerate(RANDOM_PAIRS):
        expected = ref_pq(pred, target, threshold)
        assert panoptic_quality(pred, target, threshold) == pytest.approx(expected), f"case {case}"
        matched_cases += 0 < expected[0] < 1
    assert matched_cases >= 5


def test_nuclei_scores_agrees_with_single_functions() -> None:
    for pred, target in RANDOM_PAIRS[:12]:
        expected = {name: fn(pred, target) for name, fn, _ in SINGLE_METRICS}
        expected.update(zip(PQ_KEYS, panoptic_quality(pred, target), strict=True))
        assert nuclei_scores(pred, target) == pytest.approx(expected, abs=1e-12)


# --- hand-computed cases --------------------------------------------------------------------


def _square(offset_x: int, label: int = 1) -> np.ndarray:
    inst = np.zeros((10, 10), dtype=np.int32)
    inst[2:6, 2 + offset_x : 6 + offset_x] = label
    return inst


# 4x4 squares G and S, S shifted right. By 1 px: |G| = |S| = 16, |G ∩ S| = 12, |G ∪ S| = 20:
# Dice = object Dice = 24/32, IoU = AJI = 12/20; IoU 0.6 > 0.5: TP = 1, DQ = 1, SQ = PQ = 0.6.
# By 2 px: |G ∩ S| = 8, |G ∪ S| = 24: Dice = 0.5, IoU = AJI = 1/3; TP = 0, so DQ = SQ = PQ = 0.
@pytest.mark.parametrize(
    ("offset", "dice", "iou", "pq"), [(1, 0.75, 0.6, (1.0, 0.6, 0.6)), (2, 0.5, 1 / 3, (0, 0, 0))]
)
def test_squares_offset(offset: int, dice: float, iou: float, pq: tuple[float, ...]) -> None:
    expected = {"pixel_dice": dice, "pixel_iou": iou, "object_dice": dice, "aji": iou}
    expected.update(zip(PQ_KEYS, pq, strict=True))
    assert nuclei_scores(_square(offset, label=7), _square(0)) == pytest.approx(expected)


def test_two_nuclei_merged_into_one() -> None:
    # G1, G2: touching 3x3 squares (9 px each); S: their 3x6 union (18 px).
    # AJI: both nuclei pick S (IoU 9/18), C = 9 + 9, U = 18 + 18 -> 0.5 (S is counted twice).
    # Object Dice: Dice(G_k, S) = 18/27 = 2/3 both ways -> 2/3.
    # PQ: IoU is exactly 0.5, not > 0.5: TP = 0 -> 0. Pixel Dice = 1.
    target = np.zeros((5, 8), dtype=np.int32)
    target[1:4, 1:4], target[1:4, 4:7] = 1, 2
    pred = (target > 0).astype(np.int32)
    scores = nuclei_scores(pred, target)
    expected = {"pixel_dice": 1.0, "pixel_iou": 1.0, "object_dice": 2 / 3, "aji": 0.5}
    assert scores == pytest.approx({**expected, "dq": 0.0, "sq": 0.0, "pq": 0.0})


def test_missed_nucleus_still_counts_in_aji_union() -> None:
    # G1 (16 px) found exactly; G2 (4 px) missed. AJI = 16 / (16 + 4) = 0.8 (not 1.0: the
    # missed nucleus enters U). Object Dice = 0.5 * (16/20 * 1 + 1) = 0.9.
    # PQ: TP = 1, FN = 1: DQ = 1 / 1.5, SQ = 1. Pixel Dice = 32 / 36.
    target = _square(0)
    target[8:10, 8:10] = 2
    pred = _square(0)
    scores = nuclei_scores(pred, target)
    expected = {"pixel_dice": 8 / 9, "pixel_iou": 0.8, "object_dice": 0.9, "aji": 0.8}
    assert scores == pytest.approx({**expected, "dq": 2 / 3, "sq": 1.0, "pq": 2 / 3})


@pytest.mark.parametrize(("small_id", "large_id"), [(1, 2), (2, 1)])
def test_ties_go_to_the_lowest_label(small_id: int, large_id: int) -> None:
    # AJI: G = 2x5 (10 px). S_small = its left 2x2 (IoU 4/10); S_large = the other 6 px of G
    # plus 5 px below (11 px, IoU 6/15). Equal IoU 0.4, so the lowest label wins:
    # S_small: C = 4, U = 10 + 11 (S_large unused) -> 4/21; S_large: C = 6, U = 15 + 4 -> 6/19.
    target = np.zeros((4, 6), dtype=np.int32)
    target[0:2, 0:5] = 1
    pred = np.zeros_like(target)
    pred[0:2, 0:2] = small_id
    pred[0:2, 2:5] = large_id
    pred[2, 0:5] = large_id
    expected_aji = 4 / 21 if small_id == 1 else 6 / 19
    assert aggregated_jaccard_index(pred, target) == pytest.approx(expected_aji)
    assert ref_aji(pred, target) == pytest.approx(expected_aji)
    # Object Dice: G = 2x4 (8 px); S_small = left 2x2 (4 px), S_large = right 2x2 plus 2x2
    # below it (8 px); both intersect G in 4 px. Dice(G, S_small) = 8/12, Dice(G, S_large) =
    # 8/16. Prediction side: 4/12 * 2/3 + 8/12 * 1/2 = 5/9. Result 0.5 * (Dice(G, S*) + 5/9).
    target = np.zeros((4, 4), dtype=np.int32)
    target[0:2, :] = 1
    pred = np.zeros_like(target)
    pred[0:2, 0:2] = small_id
    pred[0:4, 2:4] = large_id
    expected_dice = 0.5 * ((2 / 3 if small_id == 1 else 1 / 2) + 5 / 9)
    assert object_dice(pred, target) == pytest.approx(expected_dice)
    assert ref_object_dice(pred, target) == pytest.approx(expected_dice)


def test_empty_maps() -> None:
    empty, one = np.zeros((6, 6), dtype=np.int32), _square(0)[:6, :6]
    assert set(nuclei_scores(empty, empty).values()) == {1.0}
    assert set(nuclei_scores(one, empty).values()) == {0.0}
    assert set(nuclei_scores(empty, one).values()) == {0.0}


# --- input handling --------------------------------------------------------------------------

ALL_FUNCTIONS = [*(m[1] for m in SINGLE_METRICS), panoptic_quality, nuclei_scores]


@pytest.mark.parametrize("fn", ALL_FUNCTIONS, ids=[f.__name__ for f in ALL_FUNCTIONS])
def test_shape_mismatch_names_both_shapes(fn: Callable[..., object]) -> None:
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 6\)"):
        fn(np.zeros((4, 5), dtype=np.int32), np.zeros((4, 6), dtype=np.int32))
    with pytest.raises(ValueError, match="H, W"):
        fn(np.zeros((2, 4, 4), dtype=np.int32), np.zeros((2, 4, 4), dtype=np.int32))


def test_invalid_labels_and_threshold() -> None:
    inst = _square(0)
    with pytest.raises(ValueError, match="non-negative"):
        aggregated_jaccard_index(-inst, inst)
    with pytest.raises(TypeError, match="integer"):
        object_dice(inst.astype(np.float32), inst)
    with pytest.raises(ValueError, match="iou_threshold"):
        panoptic_quality(inst, inst, iou_threshold=0.3)


def test_label_values_and_dtypes_do_not_matter() -> None:
    pred, target = RANDOM_PAIRS[1]
    expected = nuclei_scores(pred, target)
    # Huge ids take the sort-based relabelling path; uint16 the lookup-table path.
    huge = np.where(pred > 0, pred.astype(np.uint64) + 2**40, 0).astype(np.uint64)
    assert nuclei_scores(huge, target.astype(np.uint16)) == pytest.approx(expected, abs=1e-12)
    binary = _square(0) > 0
    assert nuclei_scores(binary, _square(1, label=9)) == pytest.approx(
        nuclei_scores(_square(0), _square(1))
    )


# --- real MoNuSeg labels ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_label(monuseg_train: Path) -> np.ndarray:
    """One 1000x1000 MoNuSeg instance map (uint16, ~400 nuclei)."""
    path = sorted((monuseg_train / "labels").glob("*.png"))[0]
    return np.array(Image.open(path))


def test_real_label_against_itself(real_label: np.ndarray) -> None:
    assert len(_object_ids(real_label)) > 100
    scores = nuclei_scores(real_label, real_label)
    assert scores == pytest.approx(dict.fromkeys(scores, 1.0))


def test_real_label_without_odd_ids(real_label: np.ndarray) -> None:
    area = np.bincount(real_label.ravel().astype(np.int64))[1:]
    ids = np.arange(1, area.size + 1)
    present = area > 0
    kept = present & (ids % 2 == 0)
    all_area, kept_area = area.sum(), area[kept].sum()
    num_kept, num_removed = kept.sum(), (present & (ids % 2 == 1)).sum()
    pred = np.where(real_label % 2 == 0, real_label, 0)
    # Kept nuclei match themselves exactly; removed ones add only their area to U.
    dq = num_kept / (num_kept + 0.5 * num_removed)
    expected = {"pixel_dice": 2 * kept_area / (kept_area + all_area), "sq": 1.0, "pq": dq}
    expected |= {"pixel_iou": kept_area / all_area, "aji": kept_area / all_area, "dq": dq}
    expected["object_dice"] = 0.5 * (kept_area / all_area + 1.0)
    assert nuclei_scores(pred, real_label) == pytest.approx(expected)


def test_real_label_with_two_touching_nuclei_merged(real_label: np.ndarray) -> None:
    left, right = real_label[:, :-1], real_label[:, 1:]
    touching = (left > 0) & (right > 0) & (left != right)
    if not touching.any():
        pytest.skip("no horizontally touching nuclei in this label map")
    a, b = sorted((int(left[touching][0]), int(right[touching][0])))
    area_a, area_b = int((real_label == a).sum()), int((real_label == b).sum())
    total_area = int((real_label > 0).sum())
    num_objects = len(_object_ids(real_label))
    pred = np.where(real_label == b, a, real_label)
    # Both nuclei pick the merged object M: C gains |a| + |b|, U gains 2 |M|.
    expected_aji = total_area / (total_area + area_a + area_b)
    # Object Dice: each of a, b against M; M against the larger of the two (ties: a).
    merged = area_a + area_b
    larger = max(area_a, area_b)
    target_side = (
        (total_area - merged)
        + area_a * 2 * area_a / (area_a + merged)
        + area_b * 2 * area_b / (area_b + merged)
    ) / total_area
    pred_side = ((total_area - merged) + merged * 2 * larger / (larger + merged)) / total_area
    # PQ: M matches the larger nucleus iff it covers more than half of M.
    if larger / merged > 0.5:
        tp, fp, fn, iou_sum = num_objects - 1, 0, 1, num_objects - 2 + larger / merged
    else:
        tp, fp, fn, iou_sum = num_objects - 2, 1, 2, num_objects - 2
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    expected = {"pixel_dice": 1.0, "pixel_iou": 1.0, "aji": expected_aji}
    expected |= {"object_dice": 0.5 * (target_side + pred_side), "dq": dq}
    expected |= {"sq": iou_sum / tp, "pq": dq * iou_sum / tp}
    assert nuclei_scores(pred, real_label) == pytest.approx(expected)


def test_real_label_ids_permuted(real_label: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    pred = np.roll(np.where(real_label % 3 == 0, 0, real_label), 2, axis=1)
    expected = nuclei_scores(pred, real_label)
    lookup = rng.permutation(np.arange(1, 70_000))[: int(real_label.max()) + 1].astype(np.int64)
    lookup[0] = 0
    permuted = nuclei_scores(lookup[pred], lookup[real_label.astype(np.int64)])
    assert permuted == pytest.approx(expected, abs=1e-12)
    assert 0.3 < expected["aji"] < 0.9


def test_real_crop_matches_reference(real_label: np.ndarray) -> None:
    target = real_label[300:396, 300:396].astype(np.int64)
    pred = np.roll(target, (1, 2), axis=(0, 1))
    pred[pred % 5 == 0] = 0
    assert nuclei_scores(pred, target) == pytest.approx(ref_scores(pred, target), abs=1e-12)
