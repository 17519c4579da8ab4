"""The scale of H&E images read from their nuclei: µm per pixel when nobody says it.

A model's pixel settings (crop sizes, minimum areas, peak spacings, the opening's disc) are in
pixels at the resolution it was trained at, MoNuSeg's 40x (about 0.25 µm/px). A nominal
magnification is not the scale that matters: nuclei of one "20x" dataset can be 2.2 times
smaller in area than MoNuSeg's rather than 4. So the scale is measured on the images
themselves, by the size of what a colour-threshold pass finds:

- :func:`nucleus_radius`: pixels above the Otsu threshold of hematoxylin density, holes
  filled, each connected object's inscribed radius (its distance-transform maximum), and the
  area-weighted median of those radii. The inscribed radius of two touching nuclei is about
  one nucleus's, so fused clumps barely move it, and specks of a few pixels weigh nothing.
- :func:`estimate_mpp`: the median of the images' radii against :data:`REFERENCE_RADIUS`,
  that median on MoNuSeg's 30 training images (images only, no labels) at
  :data:`REFERENCE_MPP`. A folder, not an image: nuclei differ by organ (one MoNuSeg image's
  radius lies between 0.7 and 1.7 times the 30 images' median in 8 of 10), while the median
  of several images follows a resize of all of them: 10 MoNuSeg images resized by 0.5 / 0.7 /
  1.4 / 2 read 0.51 / 0.72 / 1.40 / 2.02 times their radius, and six 1000 px tiles of the
  CMU-1 20x scan (0.499 µm/px by its metadata) 0.42 times MoNuSeg's, i.e. 0.60 µm/px.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from protoseg.modules.pseudo_masks import hematoxylin_density, otsu_threshold

REFERENCE_MPP = 0.25
"""µm/px of the images :data:`REFERENCE_RADIUS` was measured on (MoNuSeg, 40x)."""

REFERENCE_RADIUS = 10.0
"""Median :func:`nucleus_radius` of MoNuSeg's 30 training images, px at :data:`REFERENCE_MPP`
(``tests/modules/test_scale.py`` measures it again on the real images)."""

TISSUE_DENSITY = 0.3
"""Summed RGB optical density above which a pixel is tissue (glass reads about 0.05)."""

MIN_TISSUE = 0.05
"""Share of tissue pixels below which an image tells no scale (a tile of glass)."""

_OPTICAL_DENSITY = -np.log(np.maximum(np.arange(256), 1) / 255.0).astype(np.float32)
"""Optical density of each 8-bit channel value."""

TOLERANCE = 1.25
"""Estimates within this factor of the models' µm/px read the images as they are: the
median of 8 of MoNuSeg's training images drawn at random lies within 0.85-1.27 times the
30 images' in 95% of draws (0.91-1.14 for 16), so a closer estimate says more about the
organs' nuclei than about the scale."""


def tissue_pixels(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose summed RGB optical density exceeds :data:`TISSUE_DENSITY`
    (glass and empty background do not)."""
    return _OPTICAL_DENSITY[image].sum(axis=-1) > TISSUE_DENSITY


def nucleus_radius(image: np.ndarray) -> float:
    """Area-weighted median inscribed radius (px) of the hematoxylin-positive objects of an
    RGB H&E image (H, W, 3) uint8; NaN when it holds too little tissue (under
    :data:`MIN_TISSUE` of its pixels) or nothing passes the threshold.

    The Otsu threshold is taken over the tissue's pixels (:func:`tissue_pixels`), their
    densities clipped at the 99th percentile: glass would pull the threshold down into the
    stroma, and a few pixels of ink or pigment (far denser than any nucleus) up above the
    nuclei.
    """
    tissue = tissue_pixels(image)
    if tissue.mean() < MIN_TISSUE:
        return float("nan")
    density = hematoxylin_density(image)
    values = density[tissue]
    threshold = otsu_threshold(np.minimum(values, np.percentile(values, 99)))
    mask = ndi.binary_fill_holes((density > threshold) & tissue)
    labels, count = ndi.label(mask)
    if count == 0:
        return float("nan")
    areas = np.bincount(labels.ravel())[1:]
    distance = ndi.distance_transform_edt(mask)
    radii = np.zeros(count + 1)
    np.maximum.at(radii, labels[mask], distance[mask])
    radii = radii[1:]
    order = np.argsort(radii)
    cumulative = np.cumsum(areas[order])
    return float(radii[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


@dataclass(frozen=True)
class ScaleEstimate:
    """What :func:`estimate_mpp` read from a set of images."""

    mpp: float
    """Estimated µm/px of the images."""
    radius: float
    """Median nucleus radius of the images, px."""
    images: int
    """Images the estimate read (those where the colour pass found objects)."""

    def resize_factor(self, mpp: float) -> float:
        """The factor to resize the images by for models at ``mpp`` µm/px: 1 where the
        estimate lies within :data:`TOLERANCE` of ``mpp``."""
        ratio = self.mpp / mpp
        return 1.0 if 1 / TOLERANCE < ratio < TOLERANCE else ratio

    def describe(self, mpp: float) -> str:
        """One line for the user: what was measured and what will be done with it."""
        factor = self.resize_factor(mpp)
        action = (
            f"within {TOLERANCE:g}x of the models' {mpp:g} µm/px: read as they are"
            if factor == 1.0
            else f"resampled by {factor:.3g} to the models' {mpp:g} µm/px"
        )
        return (
            f"no image_mpp given: nuclei of median radius {self.radius:.1f} px in "
            f"{self.images} image(s) read as {self.mpp:.3g} µm/px (MoNuSeg at "
            f"{REFERENCE_MPP:g} µm/px: {REFERENCE_RADIUS:g} px); {action}; set image_mpp "
            "to override"
        )


def estimate_mpp(images: Iterable[np.ndarray]) -> ScaleEstimate:
    """The µm/px of a set of H&E images from the median of their :func:`nucleus_radius`.

    Raises:
        ValueError: no image has hematoxylin-positive objects (blank or not H&E).
    """
    radii = [r for r in (nucleus_radius(image) for image in images) if np.isfinite(r) and r > 0]
    if not radii:
        raise ValueError("no nuclei found by the colour pass in any image: cannot read a scale")
    radius = float(np.median(radii))
    return ScaleEstimate(REFERENCE_MPP * REFERENCE_RADIUS / radius, radius, len(radii))
