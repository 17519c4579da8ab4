"""Patch statistics, entropy sampler and patch-contrastive loss against plain references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from protoseg.modules.patch_contrast import (
    gather_patches,
    information_separation,
    js_divergence,
    mutual_information_loss,
    patch_mean,
    pixel_entropy,
    sample_patches_by_entropy,
    separations_converged,
)


def random_probs(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).softmax(dim=1)


def test_pixel_entropy_matches_loop() -> None:
    probs = random_probs(2, 3, 4, 5)
    expected = np.zeros((2, 4, 5))
    for b in range(2):
        for y in range(4):
            for x in range(5):
                expected[b, y, x] = -sum(float(p) * math.log(float(p)) for p in probs[b, :, y, x])
    np.testing.assert_allclose(pixel_entropy(probs).numpy(), expected, rtol=1e-12)


def test_pixel_entropy_of_one_hot_is_zero_and_uniform_is_log_k() -> None:
    one_hot = torch.zeros(1, 3, 2, 2)
    one_hot[:, 1] = 1
    assert torch.allclose(pixel_entropy(one_hot), torch.zeros(1, 2, 2), atol=1e-6)
    uniform = torch.full((1, 3, 2, 2), 1 / 3)
    assert torch.allclose(pixel_entropy(uniform), torch.full((1, 2, 2), math.log(3)))


def test_patch_mean_matches_loop_and_drops_remainder() -> None:
    maps = torch.arange(2 * 1 * 9 * 10, dtype=torch.float64).reshape(2, 1, 9, 10)
    pooled = patch_mean(maps, 4)
    assert pooled.shape == (2, 1, 4)  # (9 // 4) * (10 // 4) patches, row-major
    for b in range(2):
        index = 0
        for y in range(0, 8, 4):
            for x in range(0, 8, 4):
                assert pooled[b, 0, index] == maps[b, 0, y : y + 4, x : x + 4].mean()
                index += 1


def test_patch_mean_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        patch_mean(torch.zeros(1, 1, 8, 8), 0)
    with pytest.raises(ValueError, match="smaller"):
        patch_mean(torch.zeros(1, 1, 3, 8), 4)


def test_sampler_prefers_low_entropy_patches() -> None:
    entropy = torch.tensor([[0.9, 0.0, 0.8, 0.01, 0.7, 0.02]])
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        picked = sample_patches_by_entropy(entropy, 3, 0.01, generator)
        assert sorted(picked[0].tolist()) == [1, 3, 5]


def test_sampler_is_near_uniform_at_high_temperature_and_never_repeats() -> None:
    entropy = torch.tensor([[0.0, 1.0, 0.5, 0.2]])
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(2000):
        picked = sample_patches_by_entropy(entropy, 2, 1e6, generator)[0]
        assert picked.unique().numel() == 2
        counts[picked] += 1
    np.testing.assert_allclose(counts.numpy() / 2000, 0.5, atol=0.05)


def test_sampler_rejects_bad_arguments() -> None:
    entropy = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="temperature"):
        sample_patches_by_entropy(entropy, 2, 0.0)
    with pytest.raises(ValueError, match="num_samples"):
        sample_patches_by_entropy(entropy, 5, 1.0)


def test_gather_patches_picks_rows_per_image() -> None:
    patches = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    indices = torch.tensor([[3, 0], [1, 1]])
    gathered = gather_patches(patches, indices)
    expected = torch.stack([patches[0, :, 3], patches[0, :, 0], patches[1, :, 1], patches[1, :, 1]])
    assert torch.equal(gathered, expected)


def reference_negative_mi(a: np.ndarray, b: np.ndarray, weight: float) -> float:
    """-I from the joint written out with loops (IIC, Ji et al. 2019, eq. 3 with weights)."""
    m, k = a.shape
    joint = np.zeros((k, k))
    for i in range(m):
        for c in range(k):
            for d in range(k):
                joint[c, d] += a[i, c] * b[i, d] / m
    joint = (joint + joint.T) / 2
    joint = np.maximum(joint, 1e-8)
    joint /= joint.sum()
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    total = 0.0
    for c in range(k):
        for d in range(k):
            total += joint[c, d] * (
                math.log(joint[c, d]) - weight * math.log(pa[c]) - weight * math.log(pb[d])
            )
    return -total


@pytest.mark.parametrize("weight", [1.0, 1.5])
def test_mutual_information_loss_matches_reference(weight: float) -> None:
    a = random_probs(7, 3, seed=1)
    b = random_probs(7, 3, seed=2)
    loss = mutual_information_loss(a, b, weight)
    assert loss.item() == pytest.approx(reference_negative_mi(a.numpy(), b.numpy(), weight), 1e-9)


def test_mutual_information_bounds() -> None:
    # Two balanced, confident, agreeing classes carry log 2 nats; identical uniform rows none.
    agree = torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 4, dtype=torch.float64)
    assert mutual_information_loss(agree, agree).item() == pytest.approx(-math.log(2), 1e-6)
    uniform = torch.full((8, 2), 0.5, dtype=torch.float64)
    assert mutual_information_loss(uniform, uniform).item() == pytest.approx(0.0, abs=1e-9)


def test_mutual_information_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="expected"):
        mutual_information_loss(torch.zeros(4, 2), torch.zeros(4, 3))


def test_js_divergence_matches_scipy() -> None:
    p = random_probs(6, 4, seed=3)
    q = random_probs(6, 4, seed=4)
    # scipy returns the Jensen-Shannon *distance*, the square root of the divergence.
    expected = [jensenshannon(p[i].numpy(), q[i].numpy()) ** 2 for i in range(6)]
    np.testing.assert_allclose(js_divergence(p, q).numpy(), expected, rtol=1e-9)


def test_information_separation_of_confident_consistent_pairs() -> None:
    view = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    positive, negative = information_separation(view, view.clone())
    assert positive.item() == pytest.approx(0.0, abs=1e-9)
    # Every neighbour in the cycle has the other class: maximal separation, log 2.
    assert negative.item() == pytest.approx(math.log(2), 1e-6)
    with pytest.raises(ValueError, match="two patches"):
        information_separation(view[:1], view[:1])


def test_convergence_needs_a_plateau_between_pairs() -> None:
    steps = torch.arange(11, dtype=torch.float64)
    positive = torch.full_like(steps, 0.05)
    rising = torch.stack([positive, 0.40 + 0.002 * steps], dim=1)  # gains 0.02 over the window
    flat = torch.stack([positive, 0.55 + 0.0002 * steps], dim=1)  # gains 0.002
    assert not separations_converged(rising, 0.1, 0.3, tolerance=0.005)
    assert separations_converged(flat, 0.1, 0.3, tolerance=0.005)
    # A falling separation between pairs has stopped growing too.
    assert separations_converged(flat.flip(0), 0.1, 0.3, tolerance=0.005)


def test_convergence_needs_every_step_of_the_window_in_range() -> None:
    history = torch.tensor([[0.05, 0.55]] * 6, dtype=torch.float64)
    assert separations_converged(history, 0.1, 0.3, 0.005)
    one_step_out = history.clone()
    one_step_out[2, 0] = 0.12  # positives separated once
    assert not separations_converged(one_step_out, 0.1, 0.3, 0.005)
    too_close = history.clone()
    too_close[:, 1] = 0.25  # flat, but pairs never far apart
    assert not separations_converged(too_close, 0.1, 0.3, 0.005)


def test_convergence_rejects_a_short_or_malformed_history() -> None:
    with pytest.raises(ValueError, match="separations"):
        separations_converged(torch.zeros(1, 2), 0.1, 0.3, 0.005)
    with pytest.raises(ValueError, match="separations"):
        separations_converged(torch.zeros(5, 3), 0.1, 0.3, 0.005)
