"""``InstanceSplit``: the part of a segmentation head that turns its class probabilities into
a nuclei instance map.

A strategy is an ``nn.Module`` injected into
:class:`~protoseg.lightning_modules.segmentation.SegmentationModule` as ``postprocess``
(``class_path`` + ``init_args`` in a config). It splits the foreground above each of its
``foreground_threshold`` values (:meth:`InstanceSplit.objects`, one per strategy), drops the
objects the head is nowhere sure of, keeps per connected piece the most convex of the
thresholds' splits and opens the final objects. A strategy with networks of its own (the
centre detector of :class:`~protoseg.postprocess.centre_guided.CentreGuidedSplit`) runs them
in :meth:`InstanceSplit.guide`, beside the head, and holds their weights: they travel in the
head's checkpoint. The split itself needs no tensors, so worker processes get a copy without
the networks (:meth:`InstanceSplit.detached`,
:class:`~protoseg.modules.postprocess_pool.PostprocessPool`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import nn

from protoseg.data.targets import BACKGROUND
from protoseg.io.resample import resize_nearest
from protoseg.metrics.functional import nuclei_scores
from protoseg.modules.postprocess import drop_unsure_objects, most_convex_candidates, open_objects


def as_thresholds(threshold: float | Sequence[float]) -> tuple[float, ...]:
    """One foreground threshold or several, as a tuple; each must lie in (0, 1)."""
    values = [threshold] if isinstance(threshold, (int, float)) else list(threshold)
    thresholds = tuple(float(t) for t in values)
    if not thresholds or not all(0.0 < t < 1.0 for t in thresholds):
        raise ValueError(
            "foreground_threshold must be in (0, 1), or a non-empty list of such values, "
            f"got {threshold}"
        )
    return thresholds


class InstanceSplit(nn.Module):
    """Class probabilities (3, H, W) of one image -> (H, W) int32 instance map.

    Args:
        foreground_threshold: ``1 - p(background)`` above which a pixel is nuclear. A list
            splits the image at each threshold, and every connected piece of foreground
            keeps the split whose objects there are the most convex (area-weighted mean
            solidity, :func:`~protoseg.modules.postprocess.most_convex_candidates`): pale
            nuclei need a low threshold to stay whole, dense ones a high one to come apart.
            Each threshold costs one more split per image.
        min_area: smallest object kept, px.
        min_peak_probability: when set, objects whose highest ``1 - p(background)`` stays
            below it are dropped (:func:`~protoseg.modules.postprocess.drop_unsure_objects`).
        outline_opening: when > 0, each final object is opened by a disc of this radius, px
            (:func:`~protoseg.modules.postprocess.open_objects`).

    Measured effects of each setting on the PSM chain: ``docs/postprocessing.md``.
    """

    def __init__(
        self,
        foreground_threshold: float | list[float] = 0.5,
        min_area: int = 10,
        min_peak_probability: float | None = None,
        outline_opening: int = 0,
    ) -> None:
        super().__init__()
        self.thresholds = as_thresholds(foreground_threshold)
        if min_peak_probability is not None and not 0.0 < min_peak_probability < 1.0:
            raise ValueError(
                f"min_peak_probability must be None or in (0, 1), got {min_peak_probability}"
            )
        if outline_opening < 0:
            raise ValueError(f"outline_opening must be >= 0, got {outline_opening}")
        self.min_area = min_area
        self.min_peak_probability = min_peak_probability
        self.outline_opening = outline_opening

    def objects(self, probs: np.ndarray, guide: np.ndarray | None, threshold: float) -> np.ndarray:
        """The strategy's instances of the foreground above ``threshold``: (H, W) int32."""
        raise NotImplementedError

    def guide(self, images: torch.Tensor, tile_size: int, tile_overlap: int) -> np.ndarray | None:
        """What the strategy's own networks see in images (B, 3, H, W), as (B, C, H, W)
        float32 (tiled like the head); None for a strategy without networks."""
        return None

    def prepare_fit(self, data: Mapping[str, Any]) -> None:
        """Before a fit: loads the weights of the strategy's networks and checks them
        against ``data``, the head's datamodule's hyperparameters. Nothing to do here."""

    def check(self, data: Mapping[str, Any]) -> None:
        """Before a validation, test or prediction: checks the strategy's networks (their
        weights come from the head's checkpoint) against ``data`` as :meth:`prepare_fit`
        would. Nothing to do here."""

    def complete_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The strategy's ``class_path`` config as a head's checkpoint should keep it: with
        whatever the strategy read from elsewhere filled in. As given here."""
        return config

    def at_threshold(
        self, probs: np.ndarray, guide: np.ndarray | None, threshold: float
    ) -> np.ndarray:
        """The instances above one ``threshold``, unsure objects dropped, before opening."""
        instances = self.objects(probs, guide, threshold)
        if self.min_peak_probability is not None:
            foreground = 1.0 - probs[BACKGROUND]
            instances = drop_unsure_objects(instances, foreground, self.min_peak_probability)
        return instances

    def forward(self, probs: np.ndarray, guide: np.ndarray | None = None) -> np.ndarray:
        """One image's (H, W) int32 instance map from its class probabilities (3, H, W) and
        what :meth:`guide` gave for it, (C, H, W) or None."""
        thresholds = self.thresholds
        if len(thresholds) == 1:
            instances = self.at_threshold(probs, guide, thresholds[0])
            return open_objects(instances, self.outline_opening)
        # scipy's and skimage's filters and watershed release the GIL: on 2 cores, threads
        # split the eight thresholds of a 1000 px image in 1.7 s rather than 2.8 s.
        with ThreadPoolExecutor(min(len(thresholds), torch.get_num_threads())) as pool:
            candidates = list(pool.map(lambda t: self.at_threshold(probs, guide, t), thresholds))
        chosen = self.choose(candidates, guide)
        return open_objects(chosen, self.outline_opening)

    def choose(self, candidates: list[np.ndarray], guide: np.ndarray | None) -> np.ndarray:
        """Per connected piece, the most convex of the thresholds' instance maps."""
        return most_convex_candidates(candidates)

    def detached(self) -> InstanceSplit:
        """A copy of the settings without the networks, for worker processes: the split
        reads what the networks saw (:meth:`guide`), never the networks themselves."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.__dict__["_modules"] = {}
        return copy


def split_and_score(
    split: InstanceSplit,
    probs: np.ndarray,
    guide: np.ndarray | None,
    target: np.ndarray | None,
    iou_threshold: float = 0.5,
) -> tuple[np.ndarray, dict[str, float] | None]:
    """``split(probs, guide)`` and, given the true instance map ``target``, its
    :func:`~protoseg.metrics.functional.nuclei_scores`, on the target's grid where that is
    another (the instances resized to it by nearest neighbour). A module-level function, so
    that a worker process can run it."""
    return score_instances(split(probs, guide), target, iou_threshold)


def score_instances(
    instances: np.ndarray, target: np.ndarray | None, iou_threshold: float = 0.5
) -> tuple[np.ndarray, dict[str, float] | None]:
    """``instances`` and, given the true instance map ``target``, their
    :func:`~protoseg.metrics.functional.nuclei_scores` on the target's grid (the instances
    resized to it by nearest neighbour where it is another)."""
    if target is None:
        return instances, None
    on_grid = resize_nearest(instances, target.shape)
    return instances, nuclei_scores(on_grid, target, iou_threshold)
