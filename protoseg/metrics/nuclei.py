"""``NucleiMetrics``: the MoNuSeg metric suite as one torchmetrics ``Metric``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from protoseg.metrics.functional import METRIC_NAMES, check_iou_threshold, nuclei_scores

InstanceMaps = torch.Tensor | Sequence[torch.Tensor]


def _as_image_list(maps: InstanceMaps, name: str) -> list[torch.Tensor]:
    """Splits (B, H, W) / (H, W) tensors or a sequence of (H, W) tensors into (H, W) maps."""
    if isinstance(maps, torch.Tensor):
        if maps.ndim == 2:
            return [maps]
        if maps.ndim == 3:
            return list(maps.unbind(0))
        raise ValueError(f"{name} must be (B, H, W) or (H, W), got shape {tuple(maps.shape)}")
    images = list(maps)
    for image in images:
        if not isinstance(image, torch.Tensor) or image.ndim != 2:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"every element of {name} must be an (H, W) tensor, got {shape}")
    return images


class NucleiMetrics(Metric):
    """Pixel Dice/IoU, object Dice, AJI and panoptic quality of nuclei instance maps.

    Scores are computed per image (:func:`protoseg.metrics.functional.nuclei_scores`, on the
    CPU) and ``compute`` returns their mean over images, the MoNuSeg convention (Kumar et al.
    2017 and the challenge report average per-image AJI; HoVer-Net does the same for PQ).
    This is not the same as pooling C and U, or TP/FP/FN, over the whole dataset: every image
    weighs the same whatever its number of nuclei.

    Per-image scores are list states reduced by concatenation, so under DDP ``compute``
    averages over the images of all processes.

    Calling ``compute`` before any ``update`` (or after ``reset``) returns NaN for every key,
    like ``torchmetrics.MeanMetric``, and torchmetrics warns about it.

    Args:
        prefix: prepended to every key, e.g. ``"val/"`` gives ``"val/aji"``.
        iou_threshold: PQ matching threshold in [0.5, 1).

    Example:
        >>> metric = NucleiMetrics(prefix="val/")
        >>> metric.update(pred_instances, target_instances)  # (B, H, W) int tensors
        >>> metric.compute()["val/aji"]
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, prefix: str = "", iou_threshold: float = 0.5) -> None:
        super().__init__()
        check_iou_threshold(iou_threshold)
        self.prefix = prefix
        self.iou_threshold = iou_threshold
        for name in METRIC_NAMES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        preds: InstanceMaps | None = None,
        targets: InstanceMaps | None = None,
        scores: Sequence[dict[str, float]] = (),
    ) -> None:
        """Scores each image pair and stores the scores; or stores per-image ``scores``
        computed elsewhere (e.g. in a worker process).

        Args:
            preds: predicted instance maps, int tensors (B, H, W) or (H, W), or a sequence of
                (H, W) tensors whose sizes may differ between images; 0 = background.
            targets: ground-truth instance maps, laid out like ``preds``.
            scores: instead of maps, one dict per image from
                :func:`~protoseg.metrics.functional.nuclei_scores` at this metric's
                ``iou_threshold``.

        Raises:
            ValueError: if the numbers of images or the shapes of a pair differ, if maps and
                scores are both given or neither, or if a score is missing.
        """
        if (preds is None) != (targets is None) or (preds is None) == (not scores):
            raise ValueError("give preds and targets, or scores")
        scores = list(scores)
        if preds is not None:
            pred_list = _as_image_list(preds, "preds")
            target_list = _as_image_list(targets, "targets")
            if len(pred_list) != len(target_list):
                raise ValueError(
                    f"got {len(pred_list)} predicted and {len(target_list)} target instance maps"
                )
            for pred, target in zip(pred_list, target_list, strict=True):
                pred_np, target_np = pred.detach().cpu().numpy(), target.detach().cpu().numpy()
                scores.append(nuclei_scores(pred_np, target_np, self.iou_threshold))
        for image_scores in scores:
            missing = set(METRIC_NAMES) - set(image_scores)
            if missing:
                raise ValueError(f"scores lack {sorted(missing)}")
            for name in METRIC_NAMES:
                # (1,) tensors on the metric's device: "cat" then gathers them across processes.
                getattr(self, name).append(
                    torch.tensor([image_scores[name]], dtype=torch.float32, device=self.device)
                )

    def compute(self) -> dict[str, torch.Tensor]:
        """Mean of each per-image score, keyed ``{prefix}{name}``; NaN before any update."""
        results = {}
        for name in METRIC_NAMES:
            # A list before any update; after a DDP sync, already one concatenated tensor.
            state = getattr(self, name)
            if isinstance(state, list) and not state:
                mean = torch.tensor(float("nan"), device=self.device)
            else:
                mean = dim_zero_cat(state).mean()
            results[f"{self.prefix}{name}"] = mean
        return results
