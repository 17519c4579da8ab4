"""Whole-image inference for dense networks: padding to the network stride and tiling."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Reflect-pads (B, C, H, W) on the bottom/right to multiples; returns the pads too."""
    height, width = x.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h or pad_w:
        # Reflection needs the pad to be smaller than the side; replicate covers tiny inputs.
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x, pad_h, pad_w


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets that cover ``[0, size)`` with tiles of ``tile`` px, the last flush right."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def _blend_window(tile: int, overlap: int, device: torch.device) -> torch.Tensor:
    """Weights (tile, tile) that ramp up linearly over ``overlap`` px at each border.

    Tiles are least reliable at their borders (less context, padding), so where tiles overlap
    the centre of one outweighs the border of the other; the floor of 1e-3 keeps image corners
    (covered by one tile only) well defined.
    """
    ramp = torch.ones(tile, device=device)
    if overlap > 0:
        edge = torch.linspace(0.0, 1.0, overlap + 2, device=device)[1:-1]
        ramp[:overlap] = edge
        ramp[-overlap:] = edge.flip(0)
    return torch.outer(ramp, ramp).clamp_min(1e-3)


@torch.no_grad()
def predict_tiled(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    tile_size: int = 1024,
    overlap: int = 128,
    multiple: int = 32,
) -> torch.Tensor:
    """Runs a dense network over images of any size.

    Images no larger than ``tile_size`` go through in one pass (padded to ``multiple``);
    larger ones are cut into overlapping tiles whose outputs are blended with
    :func:`_blend_window`, so no seam shows where tiles meet.

    Args:
        forward: maps (B, C, h, w) with h, w multiples of ``multiple`` to (B, K, h, w).
        images: (B, C, H, W).
        tile_size: tile side in px (rounded up to ``multiple``).
        overlap: px shared by neighbouring tiles.
        multiple: the network's output stride.

    Returns:
        Outputs (B, K, H, W) in float32.
    """
    if overlap < 0 or overlap >= tile_size:
        raise ValueError(f"overlap must be in [0, tile_size), got {overlap} for {tile_size}")
    tile_size = -(-tile_size // multiple) * multiple
    height, width = images.shape[-2:]
    padded, _, _ = _pad_to_multiple(images, multiple)
    padded_h, padded_w = padded.shape[-2:]
    if padded_h <= tile_size and padded_w <= tile_size:
        return forward(padded).float()[..., :height, :width]

    stride = tile_size - overlap
    rows = tile_starts(padded_h, tile_size, stride)
    cols = tile_starts(padded_w, tile_size, stride)
    tile_h, tile_w = min(tile_size, padded_h), min(tile_size, padded_w)
    window = _blend_window(tile_size, overlap, images.device)[:tile_h, :tile_w]
    output: torch.Tensor | None = None
    weight = torch.zeros(padded_h, padded_w, device=images.device)
    for top in rows:
        for left in cols:
            crop = padded[..., top : top + tile_h, left : left + tile_w]
            out = forward(crop).float()
            if output is None:
                output = out.new_zeros(out.shape[0], out.shape[1], padded_h, padded_w)
            output[..., top : top + tile_h, left : left + tile_w] += out * window
            weight[top : top + tile_h, left : left + tile_w] += window
    assert output is not None
    return (output / weight)[..., :height, :width]


def predict_tiled_net(
    net: torch.nn.Module, images: torch.Tensor, tile_size: int = 1024, overlap: int = 128
) -> torch.Tensor:
    """:func:`predict_tiled` of a network, padded to its ``output_stride`` (32 if unset)."""
    return predict_tiled(net, images, tile_size, overlap, getattr(net, "output_stride", 32))
