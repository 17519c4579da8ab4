"""Dense linear probe parts: frozen features, grid targets, loss, Dice, fitting."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from conftest import synthetic_he, synthetic_instances

from protoseg.metrics import pixel_dice
from protoseg.modules.linear_probe import (
    DenseFeatures,
    LinearProbeHead,
    dice_counts,
    dice_from_counts,
    fit_linear_probe,
    linear_probe_dice,
    mask_to_grid,
    probe_dice,
    probe_loss,
    upsample_logits,
)


def tiny_model() -> torch.nn.Module:
    return timm.create_model("test_resnet", pretrained=False, num_classes=0)


def test_dense_features_shapes_and_frozen() -> None:
    extractor = DenseFeatures(tiny_model(), indices=(1, 2, 3), stride=8)
    # test_resnet stages 1-3: 32 + 48 + 192 channels at strides 4, 8, 16.
    assert extractor.num_channels == 32 + 48 + 192
    assert extractor.multiple == 16
    images = torch.randn(2, 3, 50, 70, requires_grad=True)
    features = extractor(images)
    assert features.shape == (2, 272, 64 // 8, 80 // 8)
    assert not features.requires_grad
    extractor.train()
    assert not extractor.model.training
    assert all(not p.requires_grad for p in extractor.parameters())


def test_dense_features_rejects_bad_indices() -> None:
    with pytest.raises(ValueError, match="out of range"):
        DenseFeatures(tiny_model(), indices=(7,))
    with pytest.raises(TypeError, match="forward_intermediates"):
        DenseFeatures(torch.nn.Conv2d(3, 4, 3))


def test_mask_to_grid_matches_loops() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((2, 10, 13)) > 0.6
    target, weight = mask_to_grid(torch.from_numpy(masks), 4, (12, 16))
    assert target.shape == weight.shape == (2, 1, 3, 4)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                cell = masks[b, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4]
                assert weight[b, 0, i, j].item() == pytest.approx(cell.size / 16)
                assert target[b, 0, i, j].item() == pytest.approx(cell.mean(), abs=1e-5)


def test_probe_loss_matches_reference() -> None:
    rng = np.random.default_rng(1)
    logits, target = rng.normal(size=(1, 1, 3, 3)), rng.random((1, 1, 3, 3))
    weight = rng.random((1, 1, 3, 3))
    weight[0, 0, 0, 0] = 0.0
    expected = 0.0
    for x, y, w in zip(logits.ravel(), target.ravel(), weight.ravel(), strict=True):
        p = 1.0 / (1.0 + np.exp(-x))
        expected += -w * (y * np.log(p) + (1 - y) * np.log(1 - p))
    expected /= weight.sum()
    got = probe_loss(*(torch.from_numpy(a) for a in (logits, target, weight)))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_dice_counts_match_pixel_dice() -> None:
    rng = np.random.default_rng(2)
    pred, target = rng.random((2, 20, 20)) > 0.5
    counts = dice_counts(torch.from_numpy(pred), torch.from_numpy(target))
    assert dice_from_counts(*counts) == pytest.approx(pixel_dice(pred, target))
    assert dice_from_counts(0, 0) == 1.0


def test_upsample_logits_crops_to_image() -> None:
    logits = torch.zeros(1, 1, 3, 4)
    logits[..., 1, 2] = 5.0
    full = upsample_logits(logits, (20, 30), stride=8)
    assert full.shape == (1, 1, 20, 30)
    # Cell (1, 2) is centred between pixels 11-12 and 19-20; far cells stay at 0.
    assert (full[0, 0, 11:13, 19:21] > 4.0).all()
    assert full[0, 0, 0, 0] == 0.0 and full[0, 0, 19, 29] == 0.0


def square_features(seed: int, noise: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (1, 6, 8, 8) whose channel 0 marks 8 px squares of a (64, 64) mask."""
    rng = np.random.default_rng(seed)
    grid = rng.random((8, 8)) > 0.6
    mask = torch.from_numpy(np.kron(grid, np.ones((8, 8), dtype=bool)))
    features = torch.from_numpy(rng.normal(0, noise, (1, 6, 8, 8))).float()
    features[0, 0] += torch.from_numpy(grid).float() * 3
    return features, mask


def test_fit_linear_probe_learns_a_separable_mask() -> None:
    train = [square_features(seed) for seed in range(3)]
    head = fit_linear_probe([f for f, _ in train], [m for _, m in train], stride=8, steps=50)
    assert isinstance(head, LinearProbeHead) and not head.training
    # Only the informative channel gets a large weight.
    weights = head.conv.weight.flatten().abs()
    assert weights.argmax().item() == 0 and weights[0] > 3 * weights[1:].max()
    val = [square_features(seed) for seed in (10, 11)]
    # Bilinear upsampling rounds the squares' corners: Dice stays just below 1.
    assert probe_dice(head, [f for f, _ in val], [m for _, m in val], stride=8) > 0.9
    shuffled = [(f, m.flip(0)) for f, m in val]
    assert probe_dice(head, [f for f, _ in shuffled], [m for _, m in shuffled], stride=8) < 0.6


def test_linear_probe_dice_on_synthetic_nuclei() -> None:
    """Colour alone separates the purple disks: even random features find them."""
    rng = np.random.default_rng(0)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pairs = []
    for _ in range(3):
        instances = synthetic_instances(64, 8, rng)
        image = torch.from_numpy(synthetic_he(instances, rng)).permute(2, 0, 1).float() / 255
        pairs.append(
            ((image - mean[:, None, None]) / std[:, None, None], torch.from_numpy(instances > 0))
        )
    torch.manual_seed(0)
    extractor = DenseFeatures(tiny_model(), indices=(1, 2), stride=4)
    scores = linear_probe_dice(extractor, pairs[:2], pairs[2:], steps=50)
    assert set(scores) == {"dice", "train_dice"}
    assert scores["dice"] > 0.6 and scores["train_dice"] > 0.6
