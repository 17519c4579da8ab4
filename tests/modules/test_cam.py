"""Attention Dropout, the CAM network and rotation-averaged, normalised class maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protoseg.modules.cam import (
    AttentionDropout,
    CAMNet,
    bright_background,
    normalise_cams,
    rotation_averaged_cams,
)


def test_adl_is_the_identity_in_eval_mode() -> None:
    layer = AttentionDropout(drop_rate=1.0, threshold=0.5).eval()
    features = torch.randn(2, 4, 5, 5)
    assert torch.equal(layer(features), features)


def test_adl_drops_where_attention_is_highest() -> None:
    features = torch.zeros(1, 2, 4, 4)
    features[0, :, 1, 2] = 10.0  # the most attended pixel
    features[0, :, 3, 0] = 9.5  # above 0.9 x the peak: dropped too
    features[0, :, 0, 0] = 5.0  # below: kept
    layer = AttentionDropout(drop_rate=1.0, threshold=0.9).train()
    out = layer(features)
    expected = features.clone()
    expected[0, :, 1, 2] = 0.0
    expected[0, :, 3, 0] = 0.0
    assert torch.equal(out, expected)
    drop_mask, importance = layer.maps(features)
    assert drop_mask.shape == (1, 1, 4, 4) and drop_mask.sum() == 14
    assert torch.allclose(importance, torch.sigmoid(features.mean(1, keepdim=True)))


def test_adl_importance_branch_and_rate() -> None:
    features = torch.randn(4000, 3, 2, 2)
    importance = AttentionDropout(drop_rate=0.0, threshold=0.9).train()(features)
    assert torch.allclose(importance, features * torch.sigmoid(features.mean(1, keepdim=True)))
    torch.manual_seed(0)
    layer = AttentionDropout(drop_rate=0.75, threshold=0.9).train()
    out = layer(features.abs() + 1.0)  # positive attention: the drop mask zeroes some pixels
    dropped = (out == 0).flatten(1).any(dim=1).float().mean().item()
    assert dropped == pytest.approx(0.75, abs=0.03)
    with pytest.raises(ValueError):
        AttentionDropout(drop_rate=1.5)


def test_camnet_shapes_and_adl_placement() -> None:
    net = CAMNet("resnet18", num_classes=3, adl_stages=(3, 4), output_stride=16)
    assert len(net.adl) == 2
    logits, maps = net.eval()(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 3) and maps.shape == (2, 3, 4, 4)
    assert torch.allclose(logits, maps.mean(dim=(2, 3)))
    # ADL acts inside the backbone in training only: eval outputs are deterministic.
    net.eval()
    a, _ = net(torch.ones(1, 3, 32, 32))
    b, _ = net(torch.ones(1, 3, 32, 32))
    assert torch.equal(a, b)
    half = CAMNet("resnet18", num_classes=2, adl_stages=(4,), input_scale=0.5).eval()
    assert half(torch.randn(1, 3, 64, 64))[1].shape == (1, 2, 2, 2)
    with pytest.raises(ValueError, match="adl_stages"):
        CAMNet("resnet18", adl_stages=(7,))


def test_cams_are_normalised_per_class() -> None:
    maps = torch.tensor([[[[-1.0, 2.0], [4.0, 0.0]], [[-3.0, -1.0], [-2.0, -5.0]]]])
    cams = normalise_cams(maps)
    assert torch.allclose(cams[0, 0], torch.tensor([[0.0, 0.5], [1.0, 0.0]]))
    assert torch.equal(cams[0, 1], torch.zeros(2, 2))  # a class with no positive evidence


def test_rotation_averaged_cams_shape_range_and_equivariance() -> None:
    torch.manual_seed(0)
    net = CAMNet("resnet18", num_classes=3, output_stride=16).eval()
    images = torch.randn(1, 3, 64, 48)
    cams = rotation_averaged_cams(net, images, rotations=4)
    assert cams.shape == (1, 3, 64, 48)
    assert cams.min() >= 0 and torch.allclose(cams.flatten(2).amax(-1), torch.ones(1, 3))
    # Averaged over the four turns, the maps of a turned image are the turned maps.
    turned = rotation_averaged_cams(net, torch.rot90(images, 1, (-2, -1)), rotations=4)
    assert torch.allclose(turned, torch.rot90(cams, 1, (-2, -1)), atol=1e-4)
    with pytest.raises(ValueError):
        rotation_averaged_cams(net, images, rotations=5)


def test_bright_background() -> None:
    image = np.array([[[250, 250, 250], [250, 120, 250]], [[200, 200, 200], [255, 255, 255]]])
    assert bright_background(image.astype(np.uint8), 215).tolist() == [[True, False], [False, True]]
