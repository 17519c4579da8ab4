"""CentreTargets: the detector's crop targets as one picklable description, equal to the
heatmap and offset functions it combines."""

from __future__ import annotations

import pickle

import numpy as np
import torch
from skimage import draw

from protoseg.modules.centre_targets import HEATMAP_KEYS, OFFSET_KEYS, CentreTargets
from protoseg.modules.centre_votes import centre_offset_target
from protoseg.modules.centres import centre_heatmap_target


def nuclei_crop() -> np.ndarray:
    """Two convex nuclei, a fused pair (one id, far from convex) and a nucleus cut by the
    edge."""
    instances = np.zeros((48, 48), dtype=np.int64)
    instances[draw.disk((12, 12), 5, shape=instances.shape)] = 1
    instances[draw.disk((34, 14), 6, shape=instances.shape)] = 2
    pair = draw.disk((14, 28), 4), draw.disk((14, 42), 4)
    for rows, cols in pair:
        instances[rows, cols] = 3
    instances[draw.disk((46, 40), 5, shape=instances.shape)] = 4
    return instances


def test_targets_equal_the_heatmap_and_offset_functions() -> None:
    crop = nuclei_crop()
    targets = CentreTargets(sigma=1.5, min_solidity=0.9, min_area=20, ignore_pad=1, offsets=True)
    built = targets(crop)
    heat, weight = centre_heatmap_target(crop, 1.5, 0.9, 20, 1)
    offsets, offset_weight = centre_offset_target(crop, 0.9, 20)
    assert tuple(built) == HEATMAP_KEYS + OFFSET_KEYS
    np.testing.assert_array_equal(built["centre_heat"], heat[None])
    np.testing.assert_array_equal(built["centre_weight"], weight[None])
    np.testing.assert_array_equal(built["centre_offset"], offsets)
    np.testing.assert_array_equal(built["centre_offset_weight"], offset_weight[None])
    # Two peaks (the convex nuclei); the fused pair and the cut nucleus weigh nothing.
    assert int((heat == 1).sum()) == 2
    assert weight[crop == 3].max() == 0 and weight[crop == 4].max() == 0
    assert all(a.dtype == np.float32 for a in built.values())


def test_heatmap_only_without_offsets_and_a_pickle_round_trip() -> None:
    targets = CentreTargets(offsets=False)
    assert targets.keys == HEATMAP_KEYS and tuple(targets(nuclei_crop())) == HEATMAP_KEYS
    copy = pickle.loads(pickle.dumps(targets))
    assert copy == targets
    for key, value in copy(nuclei_crop()).items():
        np.testing.assert_array_equal(value, targets(nuclei_crop())[key])


def test_batch_stacks_each_crop_on_the_maps_device() -> None:
    crops = torch.from_numpy(np.stack([nuclei_crop(), np.fliplr(nuclei_crop()).copy()]))
    targets = CentreTargets(offsets=True)
    batch = targets.batch(crops)
    assert {k: tuple(v.shape) for k, v in batch.items()} == {
        "centre_heat": (2, 1, 48, 48),
        "centre_weight": (2, 1, 48, 48),
        "centre_offset": (2, 2, 48, 48),
        "centre_offset_weight": (2, 1, 48, 48),
    }
    for i in range(2):
        for key, value in targets(crops[i].numpy()).items():
            np.testing.assert_array_equal(batch[key][i].numpy(), value)
