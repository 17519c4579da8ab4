"""Resampling images and instance maps between resolutions (µm per pixel).

Every stage's pixel settings (crop sizes, minimum areas, peak spacings) are in pixels at the
resolution it was trained at: MoNuSeg's 40x images, about 0.25 µm/px. Images at another
resolution are resampled to it before a model sees them, and the predicted maps back to the
input's size. Pixel ``(r, c)`` is centred on ``(r + 0.5, c + 0.5)`` in both grids (Pillow's
convention), so an image and its labels resampled here stay aligned.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def resampled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """(H, W) of an image of ``shape`` resized by ``scale``, at least 1 px a side."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def resize_rgb(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) uint8 image resized to ``shape``: area filter when shrinking, bilinear
    when enlarging (as whole-slide tiles are read)."""
    height, width = int(shape[0]), int(shape[1])
    if (height, width) == image.shape[:2]:
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    resized = Image.fromarray(image).resize((width, height), resample)
    return np.asarray(resized, dtype=np.uint8).copy()


def resize_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A label or instance map resized to ``shape`` by nearest neighbour, dtype kept.

    Each output pixel takes the input pixel under its centre; objects smaller than a pixel of
    the coarser grid may vanish.
    """
    height, width = int(shape[0]), int(shape[1])
    if (height, width) == labels.shape[:2]:
        return labels
    rows = _sources(labels.shape[0], height)
    cols = _sources(labels.shape[1], width)
    return labels[rows[:, None], cols[None, :]]


def scale_points(points: np.ndarray, scale: float) -> np.ndarray:
    """(x, y) pixel-index coordinates (pixel centres on integers) in a grid ``scale`` times
    finer."""
    return (np.asarray(points, dtype=np.float64) + 0.5) * scale - 0.5


def points_to_shape(
    points: np.ndarray, shape: tuple[int, int], new_shape: tuple[int, int]
) -> np.ndarray:
    """(x, y) pixel-index coordinates in an image of ``shape`` (H, W) moved to the same
    places of that image resized to ``new_shape``."""
    ratio = np.array([new_shape[1] / shape[1], new_shape[0] / shape[0]])
    return (np.asarray(points, dtype=np.float64).reshape(-1, 2) + 0.5) * ratio - 0.5


def _sources(size_in: int, size_out: int) -> np.ndarray:
    centres = (np.arange(size_out) + 0.5) * (size_in / size_out)
    return np.minimum(centres.astype(np.int64), size_in - 1)
