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


def heat_colours(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 on a blue-red ramp (0 blue, 1 red)."""
    values = np.clip(np.asarray(values, np.float32), 0.0, 1.0)[..., None]
    cold, hot = np.array([40, 40, 220], np.float32), np.array([230, 30, 30], np.float32)
    return ((1 - values) * cold + values * hot + 0.5).astype(np.uint8)


def cam_picture(image: np.ndarray, cams: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image, then each class activation map blended over it, side by side.

    Args:
        image: (H, W, 3) uint8.
        cams: (K, H, W) maps in [0, 1].

    Returns:
        (H, (K + 1) W, 3) uint8.
    """
    panels = [image]
    for cam in cams:
        blended = (1 - alpha) * image.astype(np.float32) + alpha * heat_colours(cam)
        panels.append(np.clip(blended + 0.5, 0, 255).astype(np.uint8))
    return np.concatenate(panels, axis=1)
