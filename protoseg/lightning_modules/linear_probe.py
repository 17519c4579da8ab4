"""Standalone dense linear probe: how well a frozen encoder's features find nuclei.

``protoseg fit --config configs/probe/monuseg.yaml
--model.init_args.encoder_weights=runs/ssl_simclr/encoder.ckpt`` trains only a 1x1 conv on
the frozen features of the encoder file (``null``: random init), on labelled training crops,
and reports the Dice of the held-out images; comparing checkpoints with random init under the
same settings ranks the self-supervised encoders. The recipe is that of
:mod:`protoseg.modules.linear_probe` (features, head, soft grid targets and loss, pooled
Dice), here trained by minibatch AdamW on the datamodule's random crops instead of L-BFGS on
precomputed whole images.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from skimage.measure import label
from skimage.morphology import remove_small_objects

from protoseg.io.resample import resize_nearest
from protoseg.lightning_modules.evaluation import (
    IMAGENET_NORMALIZATION,
    Normalization,
    log_gathered,
    log_overlay,
    prediction_items,
    update_metrics,
)
from protoseg.lightning_modules.hparams import save_init_hyperparameters
from protoseg.lightning_modules.time_budget import warmup_cosine_optimization
from protoseg.metrics import NucleiMetrics
from protoseg.modules.backbones import TimmBackbone
from protoseg.modules.linear_probe import (
    DenseFeatures,
    LinearProbeHead,
    dice_counts,
    dice_from_counts,
    mask_to_grid,
    probe_loss,
    upsample_logits,
)

Batch = dict[str, Any]


def mask_to_instances(mask: np.ndarray, min_area: int = 10) -> np.ndarray:
    """Binary mask (H, W) -> instance map (H, W) int32: 4-connected components of at least
    ``min_area`` px, ids 1..N. A linear probe has no boundary class: touching nuclei merge."""
    instances = label(mask, connectivity=1)
    if min_area > 1:
        instances = remove_small_objects(instances, max_size=min_area - 1)
    return label(instances > 0, connectivity=1).astype(np.int32)


class LinearProbeModule(L.LightningModule):
    """A 1x1 conv on frozen dense features of a timm encoder, predicting the nuclei mask.

    Training batches need ``image`` (B, 3, h, w) normalised and ``instances`` (B, h, w)
    (e.g. :class:`~protoseg.datamodules.monuseg.MoNuSegDataModule`); validation and test
    batches hold whole images. Logged: ``val/dice`` (pixel Dice pooled over all validation
    pixels, the figure the probe callback logs as ``probe/dice``) and the per-image
    :class:`NucleiMetrics` of the connected components (``val/pixel_dice``, ``val/aji``...).

    Args:
        encoder: ``timm.create_model`` name.
        encoder_weights: local weight file (an SSL ``encoder_ckpt``, a Lightning
            checkpoint or a raw state dict); None probes the random initialisation.
        indices: timm feature stages probed.
        stride: px per feature cell.
        optimizer: optimizer factory of the head; default AdamW(lr=1e-2, weight_decay=0).
        min_area: smallest predicted nucleus kept, px.
        num_log_images: validation images drawn to TensorBoard per validation run.
        normalization: the datamodule's (mean, std), used only to draw logged images.
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        encoder_weights: str | None = None,
        indices: tuple[int, ...] = (1, 2, 3),
        stride: int = 8,
        optimizer: OptimizerCallable | None = None,
        min_area: int = 10,
        num_log_images: int = 2,
        normalization: Normalization = IMAGENET_NORMALIZATION,
    ) -> None:
        super().__init__()
        save_init_hyperparameters(self)
        backbone = TimmBackbone(encoder, encoder_weights)
        self.features = DenseFeatures(backbone.model, indices, stride)
        self.head = LinearProbeHead(self.features.num_channels)
        self.optimizer_factory = optimizer
        self.val_metrics = NucleiMetrics(prefix="val/")
        self.test_metrics = NucleiMetrics(prefix="test/")
        self._counts = torch.zeros(2, dtype=torch.long)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pixel logits (B, 1, H, W) of the nuclei mask for images (B, 3, H, W)."""
        return upsample_logits(
            self.head(self.features(images)), tuple(images.shape[-2:]), self.features.stride
        )

    def predict_instances(self, images: torch.Tensor) -> tuple[list[np.ndarray], torch.Tensor]:
        """Instance maps (one (H, W) int32 array per image) and the masks (B, H, W) bool."""
        masks = self(images)[:, 0] > 0
        instances = [mask_to_instances(m, self.hparams.min_area) for m in masks.cpu().numpy()]
        return instances, masks

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        features = self.features(batch["image"])
        stride = self.features.stride
        grid = (features.shape[-2] * stride, features.shape[-1] * stride)
        target, weight = mask_to_grid(batch["instances"] > 0, stride, grid)
        loss = probe_loss(self.head(features), target, weight)
        self.log("train/loss", loss, prog_bar=True, batch_size=features.shape[0])
        return loss

    def _score(self, batch: Batch, metrics: NucleiMetrics) -> list[np.ndarray]:
        instances, masks = self.predict_instances(batch["image"])
        update_metrics(metrics, instances, batch)
        for mask, target in zip(masks.cpu().numpy(), batch["instances"].cpu(), strict=True):
            on_grid = torch.from_numpy(resize_nearest(mask, tuple(target.shape)))
            self._counts += torch.tensor(dice_counts(on_grid, target > 0))
        return instances

    def _log_scores(self, metrics: NucleiMetrics, prefix: str) -> None:
        counts = self.all_gather(self._counts.to(self.device))
        counts = counts.view(-1, 2).sum(dim=0)
        dice = dice_from_counts(int(counts[0]), int(counts[1]))
        log_gathered(self, {f"{prefix}dice": dice, **metrics.compute()})
        metrics.reset()
        self._counts.zero_()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        instances = self._score(batch, self.val_metrics)
        if batch_idx < self.hparams.num_log_images:
            log_overlay(self, batch, instances[0], batch_idx, self.hparams.normalization)

    def on_validation_epoch_end(self) -> None:
        self._log_scores(self.val_metrics, "val/")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._score(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_scores(self.test_metrics, "test/")

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        return prediction_items(batch, self.predict_instances(batch["image"])[0])

    def configure_optimizers(self) -> dict[str, Any]:
        return warmup_cosine_optimization(
            self, self.head.parameters(), self.optimizer_factory, 0, 1e-2, default_weight_decay=0.0
        )
