"""``DistanceSplit``: the foreground alone, split by a watershed on its distance transform.

For heads trained on pseudo masks, which merge touching nuclei and so teach a weak boundary
class: the head's foreground is split as the masks themselves were
(:func:`~protoseg.modules.pseudo_masks.binary_to_instances`).
"""

from __future__ import annotations

import numpy as np

from protoseg.data.targets import BACKGROUND
from protoseg.modules.pseudo_masks import binary_to_instances, clean_binary
from protoseg.postprocess.base import InstanceSplit


class DistanceSplit(InstanceSplit):
    """Foreground (holes filled, objects under ``min_area`` dropped) split at the peaks of
    its smoothed distance transform.

    Args:
        min_distance: smallest distance between two nucleus centres, px.
        distance_sigma: Gaussian smoothing of the distance transform, px (ragged outlines
            would seed spurious splits).
        foreground_threshold, min_area, min_peak_probability, outline_opening: see
            :class:`~protoseg.postprocess.base.InstanceSplit`.
    """

    def __init__(
        self,
        min_distance: int = 5,
        distance_sigma: float = 1.0,
        foreground_threshold: float | list[float] = 0.5,
        min_area: int = 10,
        min_peak_probability: float | None = None,
        outline_opening: int = 0,
    ) -> None:
        super().__init__(foreground_threshold, min_area, min_peak_probability, outline_opening)
        if distance_sigma <= 0:
            raise ValueError(f"distance_sigma must be > 0, got {distance_sigma}")
        self.min_distance = min_distance
        self.distance_sigma = distance_sigma

    def foreground(self, probs: np.ndarray, threshold: float) -> np.ndarray:
        """(H, W) bool: ``1 - p(background)`` above ``threshold``, holes filled, small
        objects dropped."""
        return clean_binary(probs[BACKGROUND] < 1.0 - threshold, self.min_area)

    def objects(self, probs: np.ndarray, guide: np.ndarray | None, threshold: float) -> np.ndarray:
        binary = self.foreground(probs, threshold)
        return binary_to_instances(binary, self.min_distance, distance_sigma=self.distance_sigma)
