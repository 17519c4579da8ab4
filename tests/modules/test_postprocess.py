"""Instances from three-class probabilities: touching nuclei are separated by the boundary."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk
from skimage.morphology import convex_hull_image, opening
from skimage.morphology import disk as footprint_disk

from protoseg.data.targets import instances_to_three_class
from protoseg.modules.centre_votes import OFFSET_SCALE
from protoseg.modules.postprocess import (
    drop_unsure_objects,
    most_convex_candidates,
    open_objects,
    three_class_to_instances,
)


def one_hot_probs(classes: np.ndarray) -> np.ndarray:
    return np.stack([(classes == k).astype(np.float32) for k in range(3)])


def touching_disks() -> np.ndarray:
    instances = np.zeros((64, 64), np.int32)
    for i, (cy, cx) in enumerate([(20, 20), (20, 33), (45, 45)], start=1):
        instances[disk((cy, cx), 7, shape=instances.shape)] = i
    return instances


def test_recovers_touching_instances_from_perfect_probabilities() -> None:
    instances = touching_disks()
    recovered = three_class_to_instances(one_hot_probs(instances_to_three_class(instances)))
    assert recovered.max() == 3
    for i in range(1, 4):
        overlaps = np.unique(recovered[instances == i])
        assert len(overlaps) == 1 and overlaps[0] > 0, "each nucleus maps to one object"
        iou = (
            np.logical_and(recovered == overlaps[0], instances == i).sum()
            / np.logical_or(recovered == overlaps[0], instances == i).sum()
        )
        assert iou > 0.9


def test_drops_small_objects_and_handles_empty() -> None:
    classes = np.zeros((32, 32), np.uint8)
    classes[5:7, 5:7] = 1
    assert three_class_to_instances(one_hot_probs(classes), min_area=10).max() == 0
    assert three_class_to_instances(one_hot_probs(np.zeros((8, 8), np.uint8))).shape == (8, 8)


def test_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="3, H, W"):
        three_class_to_instances(np.zeros((2, 4, 4)))


def test_drop_unsure_objects_keeps_objects_by_their_peak_probability() -> None:
    instances = np.zeros((32, 32), dtype=np.int32)
    instances[2:8, 2:8] = 4  # peak 0.995: stays
    instances[12:18, 12:18] = 9  # peak 0.9: goes
    instances[24:30, 24:30] = 2  # peak exactly 0.99: stays
    foreground = np.full((32, 32), 0.7, dtype=np.float32)
    foreground[4, 4] = 0.995
    foreground[14, 14] = 0.9
    foreground[26, 26] = 0.99
    out = drop_unsure_objects(instances, foreground, 0.99)
    # independent reference: objects by hand, relabelled in order
    expected = np.zeros_like(instances)
    expected[24:30, 24:30] = 1
    expected[2:8, 2:8] = 2
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.int32
    empty = drop_unsure_objects(np.zeros((4, 4), np.int32), np.ones((4, 4)), 0.5)
    assert not empty.any()
    with pytest.raises(ValueError, match="differ in shape"):
        drop_unsure_objects(instances, foreground[:16], 0.99)


def _objects(instances: np.ndarray) -> set[frozenset[int]]:
    """The partition an instance map draws, independent of its ids."""
    flat = instances.ravel()
    return {frozenset(np.flatnonzero(flat == k).tolist()) for k in np.unique(flat) if k}


def _weighted_solidity(instances: np.ndarray, piece: np.ndarray) -> float:
    """Reference: area-weighted solidity of the objects inside ``piece``, hull by hand."""
    ids = [k for k in np.unique(instances[piece]) if k]
    areas = np.array([(instances == k).sum() for k in ids])
    hulls = np.array([convex_hull_image(instances == k).sum() for k in ids])
    return float(np.dot(areas, areas / hulls) / areas.sum())


def test_most_convex_candidates_takes_each_piece_from_its_most_convex_split() -> None:
    yy, xx = np.mgrid[:64, :96]
    left = (yy - 32) ** 2 + (xx - 20) ** 2 < 81
    right = (yy - 32) ** 2 + (xx - 34) ** 2 < 81
    disc = (yy - 32) ** 2 + (xx - 72) ** 2 < 100
    crescent = disc & ((yy - 32) ** 2 + (xx - 78) ** 2 >= 49)
    # candidate A: the pair fused into one dumbbell, the lone disc whole
    a = np.zeros((64, 96), np.int32)
    a[left | right] = 1
    a[disc] = 2
    # candidate B: the pair cut at x = 27, the lone disc eaten into a crescent
    b = np.zeros((64, 96), np.int32)
    b[left & (xx < 27)] = 5
    b[right & (xx >= 27)] = 7
    b[crescent] = 3
    pair_piece, disc_piece = (left | right), disc
    assert _weighted_solidity(b, pair_piece) > _weighted_solidity(a, pair_piece)
    assert _weighted_solidity(a, disc_piece) > _weighted_solidity(b, disc_piece)
    out = most_convex_candidates([a, b])
    expected = np.where(pair_piece, b, 0) + np.where(disc_piece, a, 0) * 10
    assert _objects(out) == _objects(expected)
    assert out.dtype == np.int32 and out.max() == 3
    # the order of the candidates does not matter, and equal ones keep the first
    assert _objects(most_convex_candidates([b, a])) == _objects(expected)
    assert _objects(most_convex_candidates([a, a.copy()])) == _objects(a)
    assert not most_convex_candidates([np.zeros((4, 4), np.int32)]).any()
    with pytest.raises(ValueError, match="at least one"):
        most_convex_candidates([])
    with pytest.raises(ValueError, match="differ in shape"):
        most_convex_candidates([a, b[:32]])


def test_votes_keep_a_nucleus_whole_that_solidity_alone_would_halve() -> None:
    square = np.zeros((24, 24), np.int32)
    square[4:20, 4:20] = 1
    halves = square.copy()
    halves[4:20, 12:20] = 2
    # both splits are fully convex: solidity ties and keeps the first, the halves
    assert _objects(most_convex_candidates([halves, square])) == _objects(halves)
    rows, cols = np.mgrid[:24, :24].astype(np.float32)
    offsets = np.stack([11.5 - rows, 11.5 - cols]) / OFFSET_SCALE  # every pixel to the centre
    out = most_convex_candidates([halves, square], offsets)
    assert _objects(out) == _objects(square)
    # votes that stay in each half keep the halves
    to_half_centres = np.stack([11.5 - rows, np.where(cols < 12, 7.5, 15.5) - cols])
    out = most_convex_candidates([halves, square], to_half_centres / OFFSET_SCALE)
    assert _objects(out) == _objects(halves)


def _opened_one_by_one(instances: np.ndarray, radius: int) -> np.ndarray:
    """Reference: each object opened on the whole image, padded with background, by
    scikit-image's opening."""
    out = np.zeros_like(instances)
    pad = radius + 1
    for label in np.unique(instances[instances > 0]):
        padded = np.pad(instances == label, pad)
        out[opening(padded, footprint_disk(radius))[pad:-pad, pad:-pad] > 0] = label
    return out


def test_open_objects_matches_a_whole_image_opening_per_object() -> None:
    rng = np.random.default_rng(0)
    instances = touching_disks()
    # jagged outlines: flip random pixels on the objects' rims to the neighbour's or background
    rim = (instances > 0) & (rng.random(instances.shape) < 0.3)
    instances[rim] = rng.integers(0, 4, size=int(rim.sum()))
    instances[30:32, 20:60] = 3  # a 2 px bar off the third disc
    instances[0:10, 0:4] = 4  # a 4 px wide strip on the image's edge
    instances[40:50, 61:64] = 5  # a 3 px wide one
    for radius in (1, 2, 3):
        ours = open_objects(instances, radius)
        reference = _opened_one_by_one(instances, radius)
        # same pixels per object, up to relabelling
        assert ours.max() == len(np.unique(reference)) - 1
        for label in np.unique(reference[reference > 0]):
            np.testing.assert_array_equal(np.unique(ours[reference == label]).size, 1)
        np.testing.assert_array_equal(ours > 0, reference > 0)


def test_open_objects_trims_a_spur_without_merging_neighbours() -> None:
    instances = touching_disks()
    instances[18:20, 5:14] = 1  # a 2 px spur out of the first disc
    opened = open_objects(instances, 2)
    assert opened.max() == 3
    assert not opened[18:20, 5:12].any()
    # the touching pair keeps its border: no pixel changes hands
    for label in (1, 2):
        assert np.all(np.isin(instances[opened == label], [label]))
    # a disc of radius 7 is barely touched (only its outline's corners)
    assert (opened == 3).sum() >= 0.95 * (touching_disks() == 3).sum()
    # an object narrower than the disc vanishes; radius 0 keeps the map
    thin = np.zeros((20, 20), np.int32)
    thin[5:8, 2:18] = 1
    assert open_objects(thin, 2).max() == 0
    np.testing.assert_array_equal(open_objects(instances, 0), instances)
    with pytest.raises(ValueError, match="radius"):
        open_objects(instances, -1)
