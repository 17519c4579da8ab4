"""Scoring, image logging and prediction items shared by the stages that output nuclei."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from protoseg.data.datasets import RandomCropDataset
from protoseg.io.errors import DataError
from protoseg.io.resample import resize_nearest
from protoseg.metrics import NucleiMetrics
from protoseg.visualize import denormalize, overlay_instances

Batch = dict[str, Any]
Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]
IMAGENET_NORMALIZATION: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def require_labelled_crops(trainer: L.Trainer, module: str) -> None:
    """Refuses a fit, before its first step, whose training crops come from an image with
    neither labels nor a pseudo mask (``unlabelled_dirs`` without ``pseudo_mask_dir``):
    ``module`` trains on instance maps. Names the first such image.

    Raises:
        DataError: such an image among the datamodule's crop records.
    """
    datamodule = getattr(trainer, "datamodule", None)
    dataset = getattr(datamodule, "train_dataset", None)
    if not isinstance(dataset, RandomCropDataset):
        return
    image_only = [r for r in dataset.records if r.label_path is None]
    if not image_only:
        return
    # Beside an unlabelled one, labelled images train as images only too: name the former.
    labels = {r.image_path: r.label_path for r in getattr(datamodule, "records", [])}
    first = next((r for r in image_only if labels.get(r.image_path) is None), image_only[0])
    raise DataError(
        f"{first.image_path}: no labels or pseudo mask, and {module} trains on instance "
        "maps: give the datamodule a pseudo_mask_dir, or leave out unlabelled_dirs"
    )


def require_instances(batch: Batch, module: str) -> None:
    """Refuses a training batch of images only (a root without labels, or one with
    ``unlabelled_dirs``, and no ``pseudo_mask_dir``): ``module`` trains on instance maps."""
    if "instances" not in batch:
        raise ValueError(
            f"{module} trains on instance maps, and these training crops have none: give the "
            "datamodule labels for every training image, or a pseudo_mask_dir (images of "
            "unlabelled_dirs have no labels)"
        )


def batch_rgb(batch: Batch, normalization: Normalization) -> list[np.ndarray]:
    """The batch's images back as (H, W, 3) uint8 RGB arrays."""
    mean, std = normalization
    return [denormalize(image.float().cpu().numpy(), mean, std) for image in batch["image"]]


def update_metrics(metrics: NucleiMetrics, predictions: list[np.ndarray], batch: Batch) -> None:
    """Adds predicted instance maps and the batch's true ``instances`` to ``metrics``, on the
    labels' grid: a map predicted on a resampled image is resized to its labels' by nearest
    neighbour, as the prediction writer writes it."""
    targets = [t.cpu() for t in batch["instances"]]
    on_grid = [resize_nearest(p, tuple(t.shape)) for p, t in zip(predictions, targets, strict=True)]
    metrics.update([torch.from_numpy(p) for p in on_grid], targets)


def log_gathered(module: L.LightningModule, values: dict[str, Any]) -> None:
    """Logs epoch-level metric values that every DDP rank already holds (the metrics gathered
    their states across ranks). ``sync_dist`` averages equal values, so it changes no
    figure, and it quiets Lightning's warning that unsynced epoch values may differ between
    ranks."""
    module.log_dict(values, sync_dist=True)


def log_overlay(
    module: L.LightningModule,
    batch: Batch,
    prediction: np.ndarray,
    index: int,
    normalization: Normalization,
) -> None:
    """Draws prediction (green) and truth (magenta) outlines of the batch's first image to
    TensorBoard as ``val/overlay_<index>``, on the image's grid (labels at another resolution
    are resized to it); does nothing without a TensorBoard logger."""
    if not isinstance(module.logger, TensorBoardLogger) or module.trainer.sanity_checking:
        return
    image = batch_rgb({"image": batch["image"][:1]}, normalization)[0]
    target = resize_nearest(batch["instances"][0].cpu().numpy(), image.shape[:2])
    picture = overlay_instances(image, prediction, target)
    module.logger.experiment.add_image(
        f"val/overlay_{index}", picture, module.global_step, dataformats="HWC"
    )


def prediction_items(
    batch: Batch, instances: list[np.ndarray], **extra: list[Any]
) -> list[dict[str, Any]]:
    """One dict per image (``stem``, ``path``, ``instances`` and each extra list's entry),
    the format :class:`~protoseg.callbacks.prediction_writer.InstancePredictionWriter` reads."""
    items = []
    for i, (stem, path, instance_map) in enumerate(
        zip(batch["stem"], batch["path"], instances, strict=True)
    ):
        item = {"stem": stem, "path": path, "instances": instance_map}
        item.update({key: values[i] for key, values in extra.items()})
        items.append(item)
    return items
