"""Instances from three-class probabilities: touching nuclei are separated by the boundary."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from protoseg.datamodules.targets import instances_to_three_class
from protoseg.modules.postprocess import three_class_to_instances


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
