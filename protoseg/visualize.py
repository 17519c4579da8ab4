"""Pictures for people: nuclei outlines drawn over the H&E image."""

from __future__ import annotations

import numpy as np
from skimage.segmentation import find_boundaries

PREDICTION_COLOR = (0, 255, 0)
TARGET_COLOR = (255, 0, 255)


def overlay_instances(
    image: np.ndarray,
    prediction: np.ndarray,
    target: np.ndarray | None = None,
) -> np.ndarray:
    """Draws instance outlines on an RGB image.

    Args:
        image: (H, W, 3) uint8.
        prediction: (H, W) instance map, outlined in green.
        target: optional (H, W) reference instance map, outlined in magenta underneath.

    Returns:
        (H, W, 3) uint8 copy of ``image`` with the outlines.
    """
    canvas = image.copy()
    if target is not None:
        canvas[find_boundaries(target, mode="inner")] = TARGET_COLOR
    canvas[find_boundaries(prediction, mode="inner")] = PREDICTION_COLOR
    return canvas


def denormalize(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Undoes channel normalisation: (3, H, W) float -> (H, W, 3) uint8."""
    rgb = image.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
