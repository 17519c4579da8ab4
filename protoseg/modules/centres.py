"""Nucleus centres: heatmap targets from (pseudo) instance maps, their focal loss and peaks.

The label-free detection stage of the PSM chain (the paper's "nuclei detection network")
learns a CenterNet-style heatmap (Zhou et al., 2019) of nucleus centres from pseudo masks.
Pseudo masks fuse touching nuclei, so only their convex objects teach where a centre is:
each one gets a Gaussian peak at its centroid, while fused (non-convex) objects and a ring
around them are left out of the loss. At inference the heatmap tells the segmentation head's
distance split where the nuclei of a fused clump sit
(:func:`~protoseg.modules.pseudo_masks.binary_to_instances` with ``centres``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.measure import regionprops

from protoseg.modules.tiling import predict_tiled_net


def single_nuclei(
    instances: np.ndarray,
    min_solidity: float = 0.9,
    min_area: int = 20,
    ignore_border: bool = True,
) -> tuple[list[Any], np.ndarray]:
    """The objects of an instance map taken as single nuclei, and where the others lie.

    An object is a single nucleus when it has at least ``min_area`` px and ``min_solidity``
    (area over convex-hull area) and, with ``ignore_border``, does not touch the map's edge
    (a crop's view of it is not its shape). Returns their regions and an (H, W) bool mask of
    every other object (fused clumps, fragments, cut objects): what the targets leave out.
    """
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"expected an (H, W) instance map, got shape {instances.shape}")
    height, width = instances.shape
    singles: list[Any] = []  # skimage RegionProperties
    others = np.zeros((height, width), dtype=bool)
    for region in regionprops(instances.astype(np.int64)):
        y0, x0, y1, x1 = region.bbox
        cut = ignore_border and (y0 == 0 or x0 == 0 or y1 == height or x1 == width)
        if cut or region.area < min_area or region.solidity < min_solidity:
            others[region.slice] |= instances[region.slice] == region.label
        else:
            singles.append(region)
    return singles, others


def centre_heatmap_target(
    instances: np.ndarray,
    sigma: float = 2.0,
    min_solidity: float = 0.9,
    min_area: int = 20,
    ignore_pad: int = 2,
    ignore_border: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmap target and loss weight of one instance map.

    Objects of at least ``min_area`` px and ``min_solidity`` (area over convex-hull area) are
    single nuclei: a Gaussian of ``sigma`` px around the centroid, exactly 1 at the centroid's
    nearest pixel. Every other object (a fused clump, a fragment) and ``ignore_pad`` px
    around it get weight 0, as do, with ``ignore_border``, objects cut by the map's edge
    (a crop's view of them is not their shape). Background and the peaks' tails weigh 1.

    Args:
        instances: (H, W) integer map, 0 = background.
        sigma: Gaussian width, px.
        min_solidity: smallest solidity of an object taken as one nucleus.
        min_area: smallest area of an object taken as one nucleus, px.
        ignore_pad: px around ignored objects also left out of the loss.
        ignore_border: leave out objects touching the map's edge.

    Returns:
        ``(heat, weight)``: (H, W) float32 each; ``heat`` in [0, 1] with 1 only at centres.
    """
    singles, others = single_nuclei(instances, min_solidity, min_area, ignore_border)
    return heatmap_of_nuclei(singles, others, sigma, ignore_pad)


def heatmap_of_nuclei(
    singles: list[Any], others: np.ndarray, sigma: float = 2.0, ignore_pad: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`centre_heatmap_target` from :func:`single_nuclei`'s output, for callers that
    build other targets from the same nuclei."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    ignore = others
    height, width = ignore.shape
    heat = np.zeros((height, width), dtype=np.float32)
    radius = int(np.ceil(4 * sigma))
    for region in singles:
        cy, cx = region.centroid
        iy, ix = int(round(cy)), int(round(cx))
        ys = slice(max(iy - radius, 0), min(iy + radius + 1, height))
        xs = slice(max(ix - radius, 0), min(ix + radius + 1, width))
        gy, gx = np.mgrid[ys, xs]
        gauss = np.exp(-((gy - cy) ** 2 + (gx - cx) ** 2) / (2 * sigma**2)).astype(np.float32)
        heat[ys, xs] = np.maximum(heat[ys, xs], gauss)
        heat[min(iy, height - 1), min(ix, width - 1)] = 1.0
    if ignore_pad > 0 and ignore.any():
        ignore = ndi.binary_dilation(ignore, iterations=ignore_pad)
    return heat, (~ignore).astype(np.float32)


def centre_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 4.0,
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, weighted per pixel.

    Pixels with target exactly 1 are centres, pulled up by ``-(1 - p)^alpha log p``; all
    others are pushed down by ``-(1 - y)^beta p^alpha log(1 - p)``, softened near centres.
    The weighted sum is divided by the weighted number of centres (at least 1).

    Args:
        logits: (B, 1, H, W) raw scores.
        target: (B, 1, H, W) heatmap in [0, 1].
        weight: (B, 1, H, W) per-pixel weight (0 leaves a pixel out).
    """
    if not logits.shape == target.shape == weight.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, target {tuple(target.shape)} and weight "
            f"{tuple(weight.shape)} must have one shape"
        )
    logits = logits.float()
    log_p = torch.nn.functional.logsigmoid(logits)
    log_not_p = torch.nn.functional.logsigmoid(-logits)
    p = log_p.exp()
    centre = (target == 1).float()
    pos = centre * (1 - p) ** alpha * log_p
    neg = (1 - centre) * (1 - target) ** beta * p**alpha * log_not_p
    total = -((pos + neg) * weight).sum()
    return total / (centre * weight).sum().clamp(min=1.0)


def heatmap_peaks(heat: np.ndarray, threshold: float = 0.3, min_distance: int = 3) -> np.ndarray:
    """(N, 2) (row, col) local maxima of a heatmap above ``threshold``."""
    return peak_local_max(
        np.asarray(heat, dtype=np.float32),
        min_distance=max(min_distance, 1),
        threshold_abs=threshold,
        exclude_border=False,
    )


def centre_maps(
    net: torch.nn.Module, images: torch.Tensor, tile_size: int, tile_overlap: int
) -> np.ndarray:
    """A centre detector's outputs (B, C, H, W) float32 for images (B, 3, H, W), tiled as
    :func:`~protoseg.modules.tiling.predict_tiled_net` does: channel 0 the heatmap in
    [0, 1], any further channels (centre offsets, :mod:`~protoseg.modules.centre_votes`) as
    the network gives them."""
    maps = predict_tiled_net(net, images, tile_size, tile_overlap).float()
    maps[:, :1] = maps[:, :1].sigmoid()
    return maps.cpu().numpy()


def centre_heatmaps(
    net: torch.nn.Module, images: torch.Tensor, tile_size: int, tile_overlap: int
) -> np.ndarray:
    """A centre detector's heatmaps (B, H, W) float32 in [0, 1] (channel 0 of
    :func:`centre_maps`)."""
    return centre_maps(net, images, tile_size, tile_overlap)[:, 0]
