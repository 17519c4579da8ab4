"""Nuclei segmentation metrics: per-image numpy functions and a torchmetrics ``Metric``.

``NucleiMetrics`` is imported lazily: importing torchmetrics takes ~10 s on a small machine
(it pulls in torchvision and torch._dynamo), which numpy-only users of the functions, such as
scripts that score saved instance maps, should not pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protoseg.metrics.functional import (
    aggregated_jaccard_index,
    nuclei_scores,
    object_dice,
    panoptic_quality,
    pixel_dice,
    pixel_iou,
)

if TYPE_CHECKING:
    from protoseg.metrics.nuclei import METRIC_NAMES, NucleiMetrics

__all__ = [
    "METRIC_NAMES",
    "NucleiMetrics",
    "aggregated_jaccard_index",
    "nuclei_scores",
    "object_dice",
    "panoptic_quality",
    "pixel_dice",
    "pixel_iou",
]

_LAZY = {"METRIC_NAMES", "NucleiMetrics"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from protoseg.metrics import nuclei

        return getattr(nuclei, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
