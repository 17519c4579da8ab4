"""Binary and three-class targets: touching nuclei stay apart, augmentations commute."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels

from protoseg.data.targets import (
    BACKGROUND,
    BOUNDARY,
    INSIDE,
    instances_to_binary,
    instances_to_three_class,
)


def touching_squares() -> np.ndarray:
    instances = np.zeros((12, 16), np.int32)
    instances[2:8, 2:8] = 1
    instances[2:8, 8:14] = 2  # shares an edge with 1
    instances[10, 1] = 9  # a single pixel: all boundary
    return instances


def test_constants() -> None:
    assert (BACKGROUND, INSIDE, BOUNDARY) == (0, 1, 2)


def test_binary() -> None:
    binary = instances_to_binary(touching_squares())
    assert binary.dtype == np.uint8 and set(np.unique(binary)) == {0, 1}
    np.testing.assert_array_equal(binary, touching_squares() > 0)


def test_three_class_inner_boundary() -> None:
    instances = touching_squares()
    classes = instances_to_three_class(instances)
    assert classes.dtype == np.uint8 and classes.shape == instances.shape
    np.testing.assert_array_equal(classes == BACKGROUND, instances == 0)
    expected_inside = np.zeros_like(instances, dtype=bool)
    expected_inside[3:7, 3:7] = True
    expected_inside[3:7, 9:13] = True
    np.testing.assert_array_equal(classes == INSIDE, expected_inside)
    assert classes[4, 7] == BOUNDARY and classes[4, 8] == BOUNDARY, "both sides of the contact"
    assert classes[10, 1] == BOUNDARY


def test_inside_components_recover_the_instances() -> None:
    instances = touching_squares()
    classes = instances_to_three_class(instances)
    seeds, count = ndi.label(classes == INSIDE, structure=np.ones((3, 3)))
    assert count == 2, "8-connected inside components: one per (non-tiny) nucleus"
    grown = expand_labels(seeds, distance=2) * (classes > 0)
    for instance_id in (1, 2):
        (match,) = np.unique(grown[instances == instance_id])
        np.testing.assert_array_equal(grown == match, instances == instance_id)


def test_image_border_is_not_boundary() -> None:
    instances = np.ones((5, 5), np.int32)
    classes = instances_to_three_class(instances)
    assert (classes == INSIDE).all()


@pytest.mark.parametrize(
    "augment",
    [np.fliplr, np.flipud, np.rot90, lambda a: np.rot90(a, 3)],
    ids=["fliplr", "flipud", "rot90", "rot270"],
)
def test_targets_commute_with_flips_and_rotations(
    augment: Callable[[np.ndarray], np.ndarray],
) -> None:
    rng = np.random.default_rng(0)
    instances = rng.integers(0, 4, (20, 24)).astype(np.int32)
    np.testing.assert_array_equal(
        instances_to_three_class(augment(instances)), augment(instances_to_three_class(instances))
    )


def test_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="H, W"):
        instances_to_three_class(np.zeros((2, 3, 4), np.int32))
