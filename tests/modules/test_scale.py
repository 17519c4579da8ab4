"""The image scale read from nuclei sizes: synthetic discs, glass, tolerance, real MoNuSeg."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from protoseg.io.images import read_rgb
from protoseg.io.resample import resampled_shape, resize_rgb
from protoseg.modules.scale import (
    REFERENCE_MPP,
    REFERENCE_RADIUS,
    ScaleEstimate,
    estimate_mpp,
    nucleus_radius,
)

Discs = Callable[..., np.ndarray]


@pytest.mark.parametrize("radius", [5, 8, 12])
def test_radius_of_discs_is_their_radius(radius: int, nuclei_discs: Discs) -> None:
    assert nucleus_radius(nuclei_discs(radius)) == pytest.approx(radius, abs=1.0)


def test_estimate_follows_a_resize_and_reads_the_reference_scale(nuclei_discs: Discs) -> None:
    images = [nuclei_discs(REFERENCE_RADIUS, seed=s) for s in range(3)]
    assert estimate_mpp(images).mpp == pytest.approx(REFERENCE_MPP, rel=0.1)
    halved = [resize_rgb(i, resampled_shape(i.shape[:2], 0.5)) for i in images]
    estimate = estimate_mpp(halved)
    assert estimate.mpp == pytest.approx(2 * REFERENCE_MPP, rel=0.1)
    assert estimate.images == 3
    assert estimate.resize_factor(REFERENCE_MPP) == pytest.approx(2.0, rel=0.1)


def test_glass_tells_no_scale(nuclei_discs: Discs) -> None:
    glass = np.full((64, 64, 3), 242, np.uint8)
    assert np.isnan(nucleus_radius(glass))
    with pytest.raises(ValueError, match="no nuclei"):
        estimate_mpp([glass, glass])
    # Glass beside tissue: the tissue's nuclei are read, not the glass.
    half = nuclei_discs(8)
    half[:, :120] = 242
    assert nucleus_radius(half) == pytest.approx(8, abs=1.0)


def test_estimates_near_the_models_scale_read_images_as_they_are() -> None:
    near = ScaleEstimate(mpp=0.29, radius=8.6, images=8)
    far = ScaleEstimate(mpp=0.5, radius=5.0, images=8)
    assert near.resize_factor(0.25) == 1.0
    assert far.resize_factor(0.25) == pytest.approx(2.0)
    assert "read as they are" in near.describe(0.25)
    assert "resampled by 2" in far.describe(0.25) and "image_mpp" in far.describe(0.25)


@pytest.mark.slow
def test_reference_radius_is_the_median_of_monuseg_training_images(monuseg_train: Path) -> None:
    images = [read_rgb(p) for p in sorted((monuseg_train / "images").glob("*.tif"))]
    assert len(images) == 30
    estimate = estimate_mpp(images)
    assert estimate.radius == pytest.approx(REFERENCE_RADIUS, abs=0.05)


def test_real_monuseg_images_shrunk_read_the_shrink(monuseg_train: Path) -> None:
    paths = sorted((monuseg_train / "images").glob("*.tif"))[::6][:4]
    crops = [read_rgb(p)[:500, :500] for p in paths]
    native = estimate_mpp(crops).mpp
    for factor in (0.5, 2.0):
        resized = [resize_rgb(c, resampled_shape(c.shape[:2], factor)) for c in crops]
        assert estimate_mpp(resized).mpp == pytest.approx(native / factor, rel=0.15)
