"""Class layer and dense head on a frozen embedder: pooling, crops, CAMs, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from protoseg.modules.cam import rotation_averaged_cams
from protoseg.modules.frozen_heads import EncoderCAMNet, EncoderSegNet, lse_pool, random_crops


class StubEmbedder(nn.Module):
    """A fixed 4 px-cell embedder (D = 8) that counts its calls."""

    dim = 8

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, self.dim, 4, stride=4)
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(images)


def test_lse_pool_against_its_formula_and_limits() -> None:
    maps = torch.randn(2, 3, 4, 5)
    r = 5.0
    flat = maps.flatten(2)
    reference = torch.log(torch.exp(r * flat).mean(dim=2)) / r
    torch.testing.assert_close(lse_pool(maps, r), reference)
    assert torch.all(lse_pool(maps, r) >= flat.mean(dim=2) - 1e-6)
    assert torch.all(lse_pool(maps, r) <= flat.amax(dim=2) + 1e-6)
    torch.testing.assert_close(lse_pool(maps, 1e4), flat.amax(dim=2), atol=1e-3, rtol=0)
    torch.testing.assert_close(lse_pool(maps, 1e-2), flat.mean(dim=2), atol=2e-2, rtol=0)
    assert math.isclose(float(lse_pool(torch.ones(1, 1, 3, 3), r)), 1.0, abs_tol=1e-6)


def test_random_crops_take_one_window_of_each_grid() -> None:
    torch.manual_seed(1)
    grids = torch.arange(2 * 10 * 12, dtype=torch.float32).view(2, 1, 10, 12)
    crops = random_crops(grids, 4)
    assert crops.shape == (2, 1, 4, 4)
    for grid, crop in zip(grids, crops, strict=True):
        y, x = divmod(int(crop[0, 0, 0]) % 120, 12)
        torch.testing.assert_close(crop, grid[:, y : y + 4, x : x + 4])
    assert random_crops(grids, 20).shape == (2, 1, 10, 12)  # a smaller grid is taken whole


def test_encoder_cam_net_trains_the_class_layer_on_crops_only() -> None:
    embedder = StubEmbedder()
    net = EncoderCAMNet(embedder, num_classes=3, crop_cells=4)
    images = torch.randn(2, 3, 64, 48)
    logits, maps = net(images)
    assert logits.shape == (2, 3) and maps.shape == (2, 3, 4, 4)  # a crop of the 16 x 12 grid
    logits.sum().backward()
    assert net.classifier.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in embedder.parameters())
    net.eval()
    logits, maps = net(images)
    assert maps.shape == (2, 3, 16, 12)
    torch.testing.assert_close(logits, lse_pool(maps, 5.0))
    mean_net = EncoderCAMNet(StubEmbedder(), pooling="mean", crop_cells=0).eval()
    logits, maps = mean_net(images)
    torch.testing.assert_close(logits, maps.mean(dim=(2, 3)))


def test_encoder_cams_are_class_probabilities_at_the_image_size() -> None:
    net = EncoderCAMNet(StubEmbedder(), num_classes=3).eval()
    images = torch.randn(1, 3, 40, 56)
    cams = rotation_averaged_cams(net, images, rotations=1)
    _, maps = net(images)
    assert cams.shape == (1, 3, 40, 56)
    assert float(cams.min()) > 0.0 and float(cams.max()) < 1.0  # sigmoid, not max-scaled
    upsampled = torch.nn.functional.interpolate(maps, size=(40, 56), mode="bilinear")
    torch.testing.assert_close(cams, torch.sigmoid(upsampled))
    assert rotation_averaged_cams(net, images, rotations=4).shape == (1, 3, 40, 56)


def test_encoder_cam_net_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="pooling"):
        EncoderCAMNet(StubEmbedder(), pooling="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lse_r"):
        EncoderCAMNet(StubEmbedder(), lse_r=0)


def test_encoder_seg_net_gives_logits_at_the_image_size() -> None:
    embedder = StubEmbedder()
    net = EncoderSegNet(embedder, num_classes=4, hidden=5)
    images = torch.randn(2, 3, 36, 52)
    logits = net(images)
    assert logits.shape == (2, 4, 36, 52) and net.output_stride == 1
    logits.mean().backward()
    assert net.head[1].weight.grad is not None
    assert all(p.grad is None for p in embedder.parameters())
