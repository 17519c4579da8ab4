"""Label-free stages' confidence maps -> binary and instance nuclei pseudo masks."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.feature import peak_local_max
from skimage.morphology import remove_small_objects
from skimage.segmentation import relabel_sequential, watershed


def hematoxylin_density(image: np.ndarray) -> np.ndarray:
    """Hematoxylin optical density (H, W) of an RGB H&E image (H, W, 3) uint8.

    Colour deconvolution with Ruifrok & Johnston's stain vectors (``skimage.color.rgb2hed``):
    nuclei, stained by hematoxylin, are where it is high.
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    return rgb2hed(image)[..., 0]


def nuclei_class(labels: np.ndarray, hematoxylin: np.ndarray, num_classes: int) -> int:
    """The class whose pixels carry the most hematoxylin on average.

    A label-free network's classes have no names; nuclei are the hematoxylin-rich ones. Classes
    with no pixel score -inf.

    Args:
        labels: (H, W) class ids in ``[0, num_classes)`` (argmax of the confidence map).
        hematoxylin: (H, W) hematoxylin density of the same image.
        num_classes: number of classes K.
    """
    sums = np.bincount(labels.ravel(), weights=hematoxylin.ravel(), minlength=num_classes)
    counts = np.bincount(labels.ravel(), minlength=num_classes)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)
    return int(np.argmax(means))


def clean_binary(mask: np.ndarray, min_area: int = 30) -> np.ndarray:
    """Fills holes and drops objects smaller than ``min_area`` px: (H, W) bool -> bool."""
    mask = ndi.binary_fill_holes(mask.astype(bool))
    if min_area > 1:
        mask = remove_small_objects(mask, max_size=min_area - 1)
    return mask


def binary_to_instances(mask: np.ndarray, min_distance: int = 5) -> np.ndarray:
    """Splits touching nuclei of a binary mask by a watershed on its distance transform.

    Each connected component gets at least one marker (its distance maximum); further peaks
    at least ``min_distance`` px apart split clumps. Returns (H, W) int32 ids 1..N.
    """
    mask = mask.astype(bool)
    components, count = ndi.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=np.int32)
    distance = ndi.distance_transform_edt(mask)
    # Smoothing the distance map stops ragged outlines from seeding spurious splits.
    smooth = ndi.gaussian_filter(distance, sigma=1.0)
    peaks = peak_local_max(
        smooth, min_distance=max(min_distance, 1), labels=components, exclude_border=False
    )
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # A component without a peak (flat or tiny) keeps its own marker.
    unseeded = np.setdiff1d(np.arange(1, count + 1), np.unique(components[markers > 0]))
    for offset, component in enumerate(unseeded, start=len(peaks) + 1):
        markers[components == component] = offset
    instances = watershed(-smooth, markers, mask=mask)
    return relabel_sequential(instances)[0].astype(np.int32)
