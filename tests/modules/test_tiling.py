"""Whole-image tiled inference gives what one pass over the whole image gives."""

from __future__ import annotations

import pytest
import torch

from protoseg.modules.tiling import predict_tiled


def pointwise(x: torch.Tensor) -> torch.Tensor:
    """A 'network' without spatial context, so tiling must reproduce it exactly."""
    assert x.shape[-1] % 8 == 0 and x.shape[-2] % 8 == 0, "inputs must be padded to the stride"
    return torch.cat([x.sum(1, keepdim=True), (x**2).mean(1, keepdim=True)], dim=1)


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (100, 130), (5, 7)])
@pytest.mark.parametrize("tile,overlap", [(32, 8), (48, 16), (1024, 128)])
def test_tiled_equals_single_pass(shape: tuple[int, int], tile: int, overlap: int) -> None:
    images = torch.randn(2, 3, *shape)
    out = predict_tiled(pointwise, images, tile_size=tile, overlap=overlap, multiple=8)
    assert out.shape == (2, 2, *shape)
    torch.testing.assert_close(out, pointwise_unpadded(images))


def pointwise_unpadded(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x.sum(1, keepdim=True), (x**2).mean(1, keepdim=True)], dim=1)


def test_overlap_must_be_smaller_than_tile() -> None:
    with pytest.raises(ValueError, match="overlap"):
        predict_tiled(pointwise, torch.randn(1, 3, 16, 16), tile_size=16, overlap=16, multiple=8)


def test_blending_hides_seams_of_a_context_network() -> None:
    """A 3x3 mean filter differs at tile borders; blended tiles stay close to one pass."""
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    torch.nn.init.constant_(conv.weight, 1 / 9)
    image = torch.rand(1, 1, 96, 96)
    whole = conv(image)
    tiled = predict_tiled(conv, image, tile_size=32, overlap=16, multiple=8)
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert (tiled - whole)[interior].abs().max() < 0.05
