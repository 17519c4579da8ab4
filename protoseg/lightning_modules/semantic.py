"""Semantic segmentation head for tissue: a dense network trained on class maps (true masks or
any weakly supervised stage's pseudo masks, unsure pixels ignored), scored with the WSSS
convention and predicting class maps of whole images."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from protoseg.io.class_maps import IGNORE_INDEX, TissueClasses, colour_classes, overlay_classes
from protoseg.lightning_modules.evaluation import (
    IMAGENET_NORMALIZATION,
    Normalization,
    batch_rgb,
    log_gathered,
)
from protoseg.lightning_modules.hparams import save_init_hyperparameters
from protoseg.lightning_modules.time_budget import warmup_cosine_optimization
from protoseg.metrics.tissue import TissueMetrics
from protoseg.modules.losses import CEDiceLoss
from protoseg.modules.tiling import predict_tiled_net

Batch = dict[str, Any]


class SemanticSegmentationModule(L.LightningModule):
    """Per-pixel tissue classes from a dense network (e.g. the U-Net of
    :class:`~protoseg.modules.networks.UNet`), trained on class-index maps.

    Training batches hold ``image`` (B, 3, h, w) and ``target`` (B, h, w) class indices
    (:class:`~protoseg.datamodules.wsss.WSSSDataModule` with ``pseudo_mask_dir``, or
    ``train_split: val`` for true masks); pixels equal to ``ignore_index`` count for nothing.
    Validation and test batches hold whole images and ``mask`` (B, H, W); every image's
    prediction goes into one confusion matrix (:class:`~protoseg.metrics.tissue.TissueMetrics`):
    ``val/miou``, ``val/fwiou``, ``val/pixel_accuracy``, ``val/iou_<class>``. Prediction
    returns, per image, ``classes``: (H, W) uint8 class indices at the image's size (the
    argmax of the logits; indices ``>= len(class_names)`` are the background's).

    Args:
        net: dense network (B, 3, H, W) -> logits (B, K, H, W); K is the number of class
            indices: ``len(class_names)``, plus one when the datamodule has a background
            class (WSSS4LUAD: 4).
        class_names: the scored classes, in index order (metric names).
        loss: loss of logits against class indices; default cross-entropy + Dice that skip
            ``ignore_index`` pixels.
        optimizer: optimizer factory taking the parameters; default AdamW(lr=1e-3,
            weight_decay=1e-4).
        warmup_steps: linear learning-rate warm-up before a cosine decay to zero
            (:mod:`~protoseg.lightning_modules.time_budget`).
        ignore_index: class index of unsure pixels in targets.
        tile_size: inference tile side for whole images.
        tile_overlap: px shared by neighbouring inference tiles.
        num_log_images: validation images drawn to TensorBoard per validation run (image,
            truth and prediction side by side).
        normalization: the datamodule's (mean, std), used only to draw the logged images.
    """

    def __init__(
        self,
        net: nn.Module,
        class_names: list[str],
        loss: nn.Module | None = None,
        optimizer: OptimizerCallable | None = None,
        warmup_steps: int = 100,
        ignore_index: int = IGNORE_INDEX,
        tile_size: int = 1024,
        tile_overlap: int = 128,
        num_log_images: int = 2,
        normalization: Normalization = IMAGENET_NORMALIZATION,
    ) -> None:
        super().__init__()
        if not 0 <= tile_overlap < tile_size:
            raise ValueError(
                f"tile_overlap must be in [0, tile_size={tile_size}), got {tile_overlap}"
            )
        save_init_hyperparameters(self)
        self.net = net
        self.class_names = tuple(class_names)
        self.loss = loss if loss is not None else CEDiceLoss(ignore_index=ignore_index)
        self.optimizer_factory = optimizer
        self.val_metrics = TissueMetrics(self.class_names, prefix="val/")
        self.test_metrics = TissueMetrics(self.class_names, prefix="test/")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) for images (B, 3, H, W) of any size (tiled when large)."""
        return predict_tiled_net(
            self.net, images, self.hparams.tile_size, self.hparams.tile_overlap
        )

    def predict_classes(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W) uint8 class indices of images (B, 3, H, W)."""
        logits = self(images)
        if logits.shape[1] < len(self.class_names):
            raise ValueError(
                f"the network outputs {logits.shape[1]} channels for {len(self.class_names)} "
                f"classes {list(self.class_names)}: set its num_classes"
            )
        return logits.argmax(dim=1).to(torch.uint8)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if "target" not in batch:
            raise ValueError(
                "SemanticSegmentationModule trains on class maps, and these training images "
                "have none: give the datamodule a pseudo_mask_dir (or train_split: val)"
            )
        images = batch["image"].contiguous(memory_format=torch.channels_last)
        logits = self.net(images).float()
        if logits.shape[1] < len(self.class_names):
            raise ValueError(
                f"the network outputs {logits.shape[1]} channels for {len(self.class_names)} "
                "classes: set its num_classes"
            )
        target = batch["target"]
        # A class index the network has no channel for (a background it does not predict)
        # would crash the loss: it is treated as unsure.
        target = target.masked_fill(target >= logits.shape[1], self.hparams.ignore_index)
        loss = self.loss(logits, target)
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def _score(self, batch: Batch, metrics: TissueMetrics, log_index: int | None) -> None:
        classes = self.predict_classes(batch["image"])
        metrics.update(classes, batch["mask"])
        if log_index is not None:
            self._log_picture(batch, classes[0].cpu().numpy(), log_index)

    def _log_picture(self, batch: Batch, classes: np.ndarray, index: int) -> None:
        """Image with the predicted classes | truth colours | prediction colours, as
        ``val/classes_<index>`` (TensorBoard only)."""
        if not isinstance(self.logger, TensorBoardLogger) or self.trainer.sanity_checking:
            return
        tissue = self.tissue_classes()
        image = batch_rgb({"image": batch["image"][:1]}, self.hparams.normalization)[0]
        truth = batch["mask"][0].cpu().numpy()
        panels = [
            overlay_classes(image, classes, tissue),
            colour_classes(truth, tissue),
            colour_classes(classes, tissue),
        ]
        picture = np.concatenate(panels, axis=1)
        self.logger.experiment.add_image(
            f"val/classes_{index}", picture, self.global_step, dataformats="HWC"
        )

    def tissue_classes(self) -> TissueClasses:
        """The datamodule's classes (codes, colours), or default colours without one."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        classes = getattr(datamodule, "classes", None)
        if isinstance(classes, TissueClasses):
            return classes
        return TissueClasses(self.class_names, background_code=len(self.class_names))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logged = batch_idx < self.hparams.num_log_images
        self._score(batch, self.val_metrics, batch_idx if logged else None)

    def on_validation_epoch_end(self) -> None:
        log_gathered(self, self.val_metrics.compute())
        self.val_metrics.reset()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._score(batch, self.test_metrics, None)

    def on_test_epoch_end(self) -> None:
        log_gathered(self, self.test_metrics.compute())
        self.test_metrics.reset()

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        """One item per image: ``stem``, ``path`` and ``classes`` (H, W) uint8 indices, the
        format :class:`~protoseg.callbacks.class_map_writer.ClassMapWriter` reads."""
        classes = self.predict_classes(batch["image"]).cpu().numpy()
        return [
            {"stem": stem, "path": path, "classes": classes[i]}
            for i, (stem, path) in enumerate(zip(batch["stem"], batch["path"], strict=True))
        ]

    def configure_optimizers(self) -> dict[str, Any]:
        return warmup_cosine_optimization(
            self, self.parameters(), self.optimizer_factory, self.hparams.warmup_steps, 1e-3
        )
