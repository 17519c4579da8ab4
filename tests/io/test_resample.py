"""Resampling to the models' resolution: sizes, filters and the alignment of labels."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import ellipse

from protoseg.io.aperio_xml import rasterize_polygons
from protoseg.io.resample import (
    points_to_shape,
    resampled_shape,
    resize_nearest,
    resize_rgb,
    scale_points,
)
from protoseg.modules.psm import cell_points


def test_resampled_shape() -> None:
    assert resampled_shape((500, 333), 2.0) == (1000, 666)
    assert resampled_shape((1000, 1000), 0.5) == (500, 500)
    assert resampled_shape((3, 3), 0.01) == (1, 1)
    with pytest.raises(ValueError, match="scale must be > 0"):
        resampled_shape((10, 10), 0.0)


def test_nearest_takes_the_pixel_under_each_centre() -> None:
    labels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    doubled = resize_nearest(labels, (6, 8))
    np.testing.assert_array_equal(doubled, np.repeat(np.repeat(labels, 2, 0), 2, 1))
    assert doubled.dtype == np.uint16
    # Halving: output pixel i covers input pixels 2i and 2i + 1; its centre lies on their edge
    # and falls into 2i + 1.
    big = np.arange(64, dtype=np.int32).reshape(8, 8)
    np.testing.assert_array_equal(resize_nearest(big, (4, 4)), big[1::2, 1::2])
    np.testing.assert_array_equal(resize_nearest(doubled, (3, 4)), labels)
    assert resize_nearest(labels, (3, 4)) is labels


def test_shrinking_averages_and_enlarging_interpolates() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    halved = resize_rgb(image, (4, 3))
    blocks = image.reshape(4, 2, 3, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(halved.astype(np.float64) - blocks).max() <= 1.0  # Pillow rounds in fixed point
    flat = np.full((5, 7, 3), 123, np.uint8)
    enlarged = resize_rgb(flat, (10, 14))
    assert enlarged.shape == (10, 14, 3) and (enlarged == 123).all()
    assert resize_rgb(image, (8, 6)) is image


def test_polygons_drawn_on_the_finer_grid_match_the_resized_map() -> None:
    # An ellipse's outline at 1 px, drawn both ways at 2x: polygons scaled then rasterised
    # against the rasterised map resized by nearest neighbour.
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    polygon = np.stack([30 + 14 * np.cos(t), 22 + 9 * np.sin(t)], axis=1)  # (x, y)
    coarse = rasterize_polygons([polygon], (48, 64))
    fine = rasterize_polygons([scale_points(polygon, 2.0)], (96, 128))
    resized = resize_nearest(coarse, (96, 128))
    inter = np.logical_and(fine > 0, resized > 0).sum()
    union = np.logical_or(fine > 0, resized > 0).sum()
    assert inter / union > 0.93
    # and the two share a centroid to a tenth of a fine pixel
    fine_centre = np.argwhere(fine > 0).mean(axis=0)
    resized_centre = np.argwhere(resized > 0).mean(axis=0)
    assert np.abs(fine_centre - resized_centre).max() < 0.1
    # the filled ellipse of skimage at 2x agrees too (its centre: row 2 * 22 + 0.5)
    rr, cc = ellipse(44.5, 60.5, 18, 28, shape=(96, 128))
    truth = np.zeros((96, 128), bool)
    truth[rr, cc] = True
    assert np.logical_and(truth, fine > 0).sum() / np.logical_or(truth, fine > 0).sum() > 0.9


def test_points_move_with_the_image() -> None:
    """Centroids of a map enlarged 2 x 3 times by repetition (an independent resize) are
    those of the small map moved by ``points_to_shape``, and moved back."""
    small = np.zeros((20, 30), np.int32)
    small[2:7, 3:5] = 1
    small[10:19, 20:29] = 2
    small[15, 5] = 3
    large = np.repeat(np.repeat(small, 2, axis=0), 3, axis=1)
    moved = points_to_shape(cell_points(small), small.shape, large.shape)
    np.testing.assert_allclose(moved, cell_points(large))
    back = points_to_shape(moved, large.shape, small.shape)
    np.testing.assert_allclose(back, cell_points(small))
    assert points_to_shape(np.zeros((0, 2)), (4, 4), (8, 8)).shape == (0, 2)
