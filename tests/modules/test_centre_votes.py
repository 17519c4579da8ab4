"""Centre offsets: their targets, their loss (against a pixel-by-pixel reference) and the
votes they cast, on discs whose centres are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage import draw

from protoseg.modules.centre_votes import (
    OFFSET_SCALE,
    centre_offset_loss,
    centre_offset_target,
    vote_heatmap,
    votes_inside,
)


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[draw.disk(centre, radius + 0.5, shape=shape)] = True
    return mask


def test_offsets_point_every_pixel_of_a_convex_nucleus_to_its_centroid() -> None:
    instances = np.zeros((40, 40), dtype=np.int32)
    instances[disc((40, 40), (20, 15), 5)] = 3
    offsets, weight = centre_offset_target(instances)
    rows, cols = np.nonzero(instances)
    centre = np.array([rows.mean(), cols.mean()])
    for r, c in zip(rows, cols, strict=True):
        np.testing.assert_allclose(offsets[:, r, c] * OFFSET_SCALE, centre - (r, c), atol=1e-5)
    assert (weight == (instances > 0)).all()
    assert (offsets[:, instances == 0] == 0).all()


def test_clumps_and_cut_objects_get_no_offsets() -> None:
    instances = np.zeros((60, 60), dtype=np.int32)
    instances[disc((60, 60), (30, 20), 6) | disc((60, 60), (30, 33), 6)] = 1
    instances[disc((60, 60), (2, 50), 5)] = 2
    offsets, weight = centre_offset_target(instances)
    assert weight.sum() == 0 and (offsets == 0).all()
    _, kept = centre_offset_target(instances, min_solidity=0.0, ignore_border=False)
    assert kept.sum() == (instances > 0).sum()
    with pytest.raises(ValueError, match="scale"):
        centre_offset_target(instances, scale=0.0)


def test_offset_loss_matches_a_pixel_by_pixel_reference() -> None:
    rng = np.random.default_rng(0)
    predicted = rng.normal(size=(2, 2, 5, 6)).astype(np.float32)
    target = rng.normal(size=(2, 2, 5, 6)).astype(np.float32)
    weight = (rng.random((2, 1, 5, 6)) > 0.4).astype(np.float32)
    beta, total = 0.1, 0.0
    for b, k, r, c in np.ndindex(*predicted.shape):
        d = abs(float(predicted[b, k, r, c]) - float(target[b, k, r, c]))
        huber = 0.5 * d * d / beta if d < beta else d - 0.5 * beta
        total += weight[b, 0, r, c] * huber
    reference = total / (2 * weight.sum())
    loss = centre_offset_loss(
        torch.from_numpy(predicted), torch.from_numpy(target), torch.from_numpy(weight), beta
    )
    assert float(loss) == pytest.approx(reference, rel=1e-5)
    nothing = centre_offset_loss(
        torch.from_numpy(predicted), torch.from_numpy(target), torch.zeros(2, 1, 5, 6)
    )
    assert float(nothing) == 0.0
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        centre_offset_loss(
            torch.from_numpy(predicted), torch.from_numpy(target), torch.from_numpy(weight[:, 0])
        )


def test_true_offsets_of_two_touching_nuclei_vote_two_peaks() -> None:
    shape = (50, 60)
    instances = np.zeros(shape, dtype=np.int32)
    instances[disc(shape, (25, 22), 7)] = 1
    instances[disc(shape, (25, 36), 7) & (instances == 0)] = 2
    # Offsets of each nucleus on its own; the votes see only the fused foreground.
    offsets = np.zeros((2, *shape), dtype=np.float32)
    for label in (1, 2):
        alone = np.where(instances == label, label, 0)
        part, _ = centre_offset_target(alone, min_solidity=0.0)
        offsets += part
    votes = vote_heatmap(instances > 0, offsets, sigma=1.5)
    assert votes.shape == shape and votes.min() >= 0.0 and votes.max() == 1.0
    # Two saturated plateaus, and their centres of mass are the nuclei's centroids.
    plateaus, count = ndi.label(votes >= 0.99)
    assert count == 2
    found = np.array(ndi.center_of_mass(votes >= 0.99, plateaus, [1, 2]))
    truth = [np.argwhere(instances == k).mean(0) for k in (1, 2)]
    np.testing.assert_allclose(sorted(found.tolist()), sorted(np.array(truth).tolist()), atol=1.0)
    # The pixels between them vote nowhere near the contact line.
    assert votes[25, 29] < 0.5


def test_votes_name_a_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"offsets \(2, 4, 4\)"):
        vote_heatmap(np.ones((5, 5), bool), np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"offsets \(2, 4, 4\)"):
        votes_inside(np.ones((5, 5), np.int32), np.zeros((2, 4, 4), np.float32))


def test_votes_inside_matches_a_pixel_by_pixel_reference() -> None:
    rng = np.random.default_rng(0)
    instances = rng.integers(0, 4, size=(9, 11)).astype(np.int32)
    instances[instances == 2] = 0  # an absent id
    offsets = rng.normal(0.0, 0.3, size=(2, 9, 11)).astype(np.float32)
    share = votes_inside(instances, offsets)
    assert share.shape == (4,) and share[0] == 0.0 and share[2] == 0.0
    for k in (1, 3):
        hits = []
        for r, c in zip(*np.nonzero(instances == k), strict=True):
            tr = min(max(round(float(r + offsets[0, r, c] * OFFSET_SCALE)), 0), 8)
            tc = min(max(round(float(c + offsets[1, r, c] * OFFSET_SCALE)), 0), 10)
            hits.append(instances[tr, tc] == k)
        assert share[k] == pytest.approx(np.mean(hits))
