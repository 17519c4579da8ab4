"""``ThreeClassWatershed``: nuclei seeded by the *inside* class, grown over the boundary class.

For heads trained on true instance labels, whose boundary class parts touching nuclei
(:func:`~protoseg.modules.postprocess.three_class_to_instances`).
"""

from __future__ import annotations

import numpy as np

from protoseg.modules.postprocess import three_class_to_instances
from protoseg.postprocess.base import InstanceSplit


class ThreeClassWatershed(InstanceSplit):
    """Seeds from the *inside* class, grown over the foreground by a watershed.

    Args:
        marker_threshold: inside probability above which a pixel seeds a nucleus.
        min_seed_area: smallest seed kept, px; None: half of ``min_area`` (at least 1).
        foreground_threshold, min_area, min_peak_probability, outline_opening: see
            :class:`~protoseg.postprocess.base.InstanceSplit`.
    """

    def __init__(
        self,
        marker_threshold: float = 0.5,
        min_seed_area: int | None = None,
        foreground_threshold: float | list[float] = 0.5,
        min_area: int = 10,
        min_peak_probability: float | None = None,
        outline_opening: int = 0,
    ) -> None:
        super().__init__(foreground_threshold, min_area, min_peak_probability, outline_opening)
        if min_seed_area is not None and min_seed_area < 1:
            raise ValueError(f"min_seed_area must be None or >= 1, got {min_seed_area}")
        self.marker_threshold = marker_threshold
        self.min_seed_area = min_seed_area

    def objects(self, probs: np.ndarray, guide: np.ndarray | None, threshold: float) -> np.ndarray:
        return three_class_to_instances(
            probs, self.marker_threshold, threshold, self.min_area, self.min_seed_area
        )
