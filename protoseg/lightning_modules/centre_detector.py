"""Nucleus-centre detector: the label-free PSM chain's detection network.

Chen et al. train a nuclei detection network on their pseudo masks before the segmentation
network. Here a dense network learns a CenterNet-style centre heatmap
(:func:`~protoseg.modules.centres.centre_heatmap_target`) from the convex objects of the
pseudo masks, fused clumps left out of the loss; the segmentation head's distance split then
reads the heatmap to cut clumps between nuclei
(:class:`~protoseg.postprocess.centre_guided.CentreGuidedSplit`, whose network is built from
this module's checkpoint; measured: ``docs/postprocessing.md``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.cli import OptimizerCallable
from skimage.morphology import dilation, disk
from torch import nn

from protoseg.io.resample import points_to_shape
from protoseg.lightning_modules.ddp_layout import channels_last_under_ddp
from protoseg.lightning_modules.evaluation import (
    IMAGENET_NORMALIZATION,
    Batch,
    Normalization,
    log_gathered,
    log_overlay,
    prediction_items,
    require_instances,
    require_labelled_crops,
)
from protoseg.lightning_modules.hparams import save_init_hyperparameters
from protoseg.lightning_modules.time_budget import warmup_cosine_optimization
from protoseg.metrics.detection import DetectionMetrics
from protoseg.modules.centre_targets import CentreTargets
from protoseg.modules.centre_votes import centre_offset_loss
from protoseg.modules.centres import centre_focal_loss, centre_heatmaps, heatmap_peaks
from protoseg.modules.psm import cell_points
from protoseg.modules.tiling import predict_tiled_net


def points_to_discs(points: np.ndarray, shape: tuple[int, int], radius: int = 2) -> np.ndarray:
    """An instance map with one disc of ``radius`` px (ids 1..N) per (row, col) point."""
    discs = np.zeros(shape, dtype=np.int32)
    if len(points):
        rows, cols = np.round(points).astype(int).T
        discs[rows, cols] = np.arange(1, len(points) + 1)
        discs = dilation(discs, disk(radius))
    return discs


def start_at_prior(net: nn.Module, prior: float = 0.1) -> None:
    """Sets the bias of ``net``'s last convolution so that the heatmap (channel 0) starts at
    ``prior`` everywhere (CenterNet's start: the loss of the many background pixels does not
    swamp the first steps) and any offset channels at 0."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if convs and convs[-1].bias is not None:
        with torch.no_grad():
            convs[-1].bias.zero_()
            convs[-1].bias[0] = float(np.log(prior / (1.0 - prior)))


class CentreDetectorModule(L.LightningModule):
    """Trains a dense network on centre heatmaps (and offsets) of (pseudo) instance maps.

    Training batches need ``image`` (B, 3, h, w) and ``instances`` (B, h, w) — the crops of
    :class:`~protoseg.datamodules.monuseg.MoNuSegDataModule`, on pseudo masks or true labels;
    targets are built per crop (:class:`~protoseg.modules.centre_targets.CentreTargets`), so
    objects cut by a crop's edge are left out. On an accelerator the datamodule builds them in
    its DataLoader workers, beside the network, as this module asks
    (:meth:`loader_crop_targets`; the targets of a batch of 8 crops of 224 px take ~0.08 s
    of one CPU core, and two workers deliver 13.8 such batches a second); otherwise the
    training step builds them. Validation
    scores the heatmap's peaks against the centroids of the true nuclei (detection
    precision / recall / F1 within ``radius`` px) and logs them over the image. Prediction
    writes one small disc per detected centre.

    Args:
        net: dense network mapping (B, 3, H, W) to a heatmap logit (B, 1, H, W), or with
            ``offset_weight`` > 0 to (B, 3, H, W): heatmap logit and the (row, col) offset to
            the nucleus's centre (:mod:`~protoseg.modules.centre_votes`); e.g.
            :class:`~protoseg.modules.networks.UNet` with ``num_classes: 1`` or ``3``.
        optimizer: optimizer factory taking the parameters; default AdamW(lr=2e-3,
            weight_decay=1e-4).
        warmup_steps: linear learning-rate warm-up before the cosine
            (:mod:`~protoseg.lightning_modules.time_budget`).
        sigma: Gaussian width of a centre's peak, px.
        min_solidity: pseudo objects at least this convex are taught as single nuclei;
            the others (fused clumps) are left out of the loss.
        min_area: smaller pseudo objects are left out of the loss, px.
        ignore_pad: px around a left-out object also left out.
        offset_weight: weight of the offset regression
            (:func:`~protoseg.modules.centre_votes.centre_offset_loss`, on the pixels of
            the convex pseudo nuclei) beside the heatmap's focal loss; 0 trains the heatmap
            alone. Validation scores the heatmap's peaks only (votes need a foreground).
        peak_threshold: heatmap value above which a local maximum is a detection.
        min_distance: smallest distance between two detections, px.
        radius: largest distance of a matched detection (validation), px.
        tile_size: inference tile side for whole images.
        tile_overlap: px shared by neighbouring inference tiles.
        loader_targets: build each crop's targets in the training loader's workers (True)
            or in the training step (False); None (default) does the former when training on
            an accelerator, where the step's CPU time holds the device back, and the latter
            on a CPU, which the network's threads already fill (150 steps on 2 cores: 108-110
            s in the step, 115-125 s in 2 workers).
        num_log_images: validation images drawn to TensorBoard per validation run.
        normalization: the datamodule's (mean, std), used only to draw the logged images.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable | None = None,
        warmup_steps: int = 100,
        sigma: float = 2.0,
        min_solidity: float = 0.9,
        min_area: int = 20,
        ignore_pad: int = 2,
        offset_weight: float = 0.0,
        peak_threshold: float = 0.3,
        min_distance: int = 3,
        radius: float = 6.0,
        tile_size: int = 1024,
        tile_overlap: int = 128,
        loader_targets: bool | None = None,
        num_log_images: int = 2,
        normalization: Normalization = IMAGENET_NORMALIZATION,
    ) -> None:
        super().__init__()
        if not 0 <= tile_overlap < tile_size:
            raise ValueError(
                f"tile_overlap must be in [0, tile_size={tile_size}), got {tile_overlap}"
            )
        if not 0.0 < peak_threshold < 1.0:
            raise ValueError(f"peak_threshold must be in (0, 1), got {peak_threshold}")
        if offset_weight < 0:
            raise ValueError(f"offset_weight must be >= 0, got {offset_weight}")
        save_init_hyperparameters(self)
        self.net = net
        start_at_prior(net)
        self.optimizer_factory = optimizer
        self.val_metrics = DetectionMetrics(radius=radius, prefix="val/")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Centre logits (B, 1, H, W) for images (B, 3, H, W) of any size."""
        return predict_tiled_net(
            self.net, images, self.hparams.tile_size, self.hparams.tile_overlap
        )

    def heatmaps(self, images: torch.Tensor) -> np.ndarray:
        """Centre heatmaps (B, H, W) float32 in [0, 1]."""
        return centre_heatmaps(self.net, images, self.hparams.tile_size, self.hparams.tile_overlap)

    @property
    def crop_targets(self) -> CentreTargets:
        """What a training crop's targets are, from this module's settings."""
        hp = self.hparams
        return CentreTargets(
            hp.sigma, hp.min_solidity, hp.min_area, hp.ignore_pad, offsets=hp.offset_weight > 0
        )

    def setup(self, stage: str) -> None:
        channels_last_under_ddp(self, stage)  # before the DDP wrap (ddp_layout.py)
        if stage == "fit":
            require_labelled_crops(self.trainer, "CentreDetectorModule")

    def loader_crop_targets(self) -> CentreTargets | None:
        """The targets each training crop should carry, built in the training loader's
        workers (:func:`~protoseg.data.datasets.requested_crop_targets`, which the datamodule
        reads as it builds its crops), or None to build them in the training step: by
        ``loader_targets``, or by default on an accelerator only."""
        in_loader = self.hparams.loader_targets
        if in_loader is None:
            trainer = self._trainer
            in_loader = trainer is not None and not isinstance(trainer.accelerator, CPUAccelerator)
        return self.crop_targets if in_loader else None

    def _targets(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The batch's targets: those its loader built, else built here from its crops."""
        crop_targets = self.crop_targets
        if all(key in batch for key in crop_targets.keys):
            return {key: batch[key] for key in crop_targets.keys}
        return crop_targets.batch(batch["instances"])

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        require_instances(batch, "CentreDetectorModule")
        images = batch["image"].contiguous(memory_format=torch.channels_last)
        targets = self._targets(batch)
        outputs = self.net(images).float()
        loss = centre_focal_loss(outputs[:, :1], targets["centre_heat"], targets["centre_weight"])
        if self.hparams.offset_weight > 0:
            if outputs.shape[1] != 3:
                raise ValueError(
                    f"offset_weight > 0 needs a net with 3 outputs (heatmap, row and col "
                    f"offsets), got {outputs.shape[1]}"
                )
            offset_loss = centre_offset_loss(
                outputs[:, 1:], targets["centre_offset"], targets["centre_offset_weight"]
            )
            self.log("train/offset_loss", offset_loss, batch_size=images.shape[0])
            loss = loss + self.hparams.offset_weight * offset_loss
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def _peaks(self, images: torch.Tensor) -> list[np.ndarray]:
        hp = self.hparams
        return [heatmap_peaks(h, hp.peak_threshold, hp.min_distance) for h in self.heatmaps(images)]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        peaks = self._peaks(batch["image"])
        grid = tuple(batch["image"].shape[-2:])
        # cell_points gives (x, y): the peaks' (row, col) are turned to match. The true
        # centroids come from the labels at their own resolution, moved onto the image's grid.
        truth = [
            points_to_shape(cell_points(m), m.shape, grid) for m in batch["instances"].cpu().numpy()
        ]
        self.val_metrics.update(
            [torch.from_numpy(p[:, ::-1].astype(np.float64)) for p in peaks],
            [torch.from_numpy(t) for t in truth],
        )
        if batch_idx < self.hparams.num_log_images:
            discs = points_to_discs(peaks[0], tuple(batch["image"].shape[-2:]))
            log_overlay(self, batch, discs, batch_idx, self.hparams.normalization)

    def on_validation_epoch_end(self) -> None:
        log_gathered(self, self.val_metrics.compute())
        self.val_metrics.reset()

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        shape = tuple(batch["image"].shape[-2:])
        discs = [points_to_discs(p, shape) for p in self._peaks(batch["image"])]
        return prediction_items(batch, discs)

    def configure_optimizers(self) -> dict[str, Any]:
        return warmup_cosine_optimization(
            self, self.parameters(), self.optimizer_factory, self.hparams.warmup_steps, 2e-3
        )
