"""Centre heatmap targets, their focal loss (against a direct reference) and peaks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protoseg.modules.centres import (
    centre_focal_loss,
    centre_heatmap_target,
    heatmap_peaks,
)
from protoseg.modules.psm import cell_points


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def test_convex_nucleus_gets_a_unit_peak_at_its_centroid() -> None:
    instances = disc((40, 40), (20, 15), 5).astype(np.int32)
    heat, weight = centre_heatmap_target(instances, sigma=2.0)
    assert heat.max() == 1.0
    assert np.argwhere(heat == 1.0).tolist() == [[20, 15]]
    # A Gaussian of sigma 2: one sigma away it is exp(-1/2).
    assert heat[20, 17] == pytest.approx(np.exp(-0.5), rel=1e-5)
    assert heat[0, 0] == 0.0
    assert (weight == 1.0).all()


def test_fused_clump_and_cut_objects_are_left_out_of_the_loss() -> None:
    instances = np.zeros((60, 60), dtype=np.int32)
    # Two discs fused into one object: solidity well below 0.9.
    instances[disc((60, 60), (30, 20), 6) | disc((60, 60), (30, 33), 6)] = 1
    # An object cut by the map's edge.
    instances[disc((60, 60), (2, 50), 5)] = 2
    heat, weight = centre_heatmap_target(instances, sigma=2.0, ignore_pad=2)
    assert heat.max() == 0.0
    assert weight[30, 26] == 0.0 and weight[30, 12] == 0.0  # inside the clump, and its ring
    assert weight[0, 50] == 0.0
    assert weight[50, 5] == 1.0
    _, weight_kept = centre_heatmap_target(instances, ignore_border=False, min_solidity=0.0)
    assert weight_kept[0, 50] == 1.0


def reference_focal(logits: np.ndarray, target: np.ndarray, weight: np.ndarray) -> float:
    """CenterNet's loss written pixel by pixel (alpha 2, beta 4)."""
    total, centres = 0.0, 0.0
    for z, y, w in zip(logits.ravel(), target.ravel(), weight.ravel(), strict=True):
        p = 1.0 / (1.0 + np.exp(-z))
        if y == 1.0:
            total += -w * (1 - p) ** 2 * np.log(p)
            centres += w
        else:
            total += -w * (1 - y) ** 4 * p**2 * np.log(1 - p)
    return total / max(centres, 1.0)


def test_focal_loss_matches_a_pixelwise_reference() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2, 1, 6, 7))
    target = rng.uniform(0, 0.9, (2, 1, 6, 7))
    target[0, 0, 2, 3] = target[1, 0, 4, 1] = target[1, 0, 0, 6] = 1.0
    weight = (rng.uniform(size=(2, 1, 6, 7)) > 0.2).astype(np.float64)
    weight[1, 0, 0, 6] = 0.0
    got = centre_focal_loss(*(torch.from_numpy(a) for a in (logits, target, weight)))
    assert got.item() == pytest.approx(reference_focal(logits, target, weight), rel=1e-6)


def test_focal_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="one shape"):
        centre_focal_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4))


def test_peaks_and_centroids() -> None:
    heat = np.zeros((30, 30), dtype=np.float32)
    heat[5, 6], heat[20, 21], heat[20, 23] = 0.9, 0.8, 0.5
    peaks = heatmap_peaks(heat, threshold=0.3, min_distance=3)
    assert sorted(map(tuple, peaks.tolist())) == [(5, 6), (20, 21)]
    instances = np.zeros((10, 10), dtype=np.int32)
    instances[2:5, 2:5], instances[6:8, 6:10] = 3, 7
    # The detector's validation scores peaks against these centroids, as (x, y).
    np.testing.assert_allclose(cell_points(instances), [[3.0, 3.0], [7.5, 6.5]])
    assert cell_points(np.zeros((4, 4), dtype=np.int32)).shape == (0, 2)
