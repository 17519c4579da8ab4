"""Training targets from instance maps: binary foreground and three-class maps."""

from __future__ import annotations

import numpy as np
from skimage.segmentation import find_boundaries

BACKGROUND = 0
"""Class id of pixels outside every nucleus."""
INSIDE = 1
"""Class id of nucleus pixels not on a nucleus's inner boundary."""
BOUNDARY = 2
"""Class id of a nucleus's inner boundary: its pixels 4-adjacent to background or to
another nucleus. Touching nuclei are thus always separated by boundary pixels, so the
connected components of :data:`INSIDE` (even 8-connected ones) are one per nucleus, and
growing each back over the boundary recovers the instances."""


def instances_to_binary(instances: np.ndarray) -> np.ndarray:
    """Foreground mask of an instance map.

    Args:
        instances: (H, W) integer map, 0 = background.

    Returns:
        (H, W) uint8, 1 inside any nucleus, 0 elsewhere.
    """
    return (np.asarray(instances) > 0).astype(np.uint8)


def instances_to_three_class(instances: np.ndarray) -> np.ndarray:
    """Background / inside / boundary classes of an instance map.

    The boundary is ``find_boundaries(mode="inner")``: nucleus pixels with a 4-neighbour of
    another label. The image border is not a boundary, so a crop's target may differ from
    the same window of the whole image's target only in its outermost rows and columns.

    Args:
        instances: (H, W) integer map, 0 = background.

    Returns:
        (H, W) uint8 with :data:`BACKGROUND`, :data:`INSIDE` and :data:`BOUNDARY` ids.
    """
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"expected an (H, W) instance map, got shape {instances.shape}")
    classes = np.where(instances > 0, INSIDE, BACKGROUND).astype(np.uint8)
    classes[find_boundaries(instances, mode="inner") & (instances > 0)] = BOUNDARY
    return classes
