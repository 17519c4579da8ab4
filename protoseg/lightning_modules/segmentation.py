"""Segmentation head: a dense network trained on true labels or on any stage's pseudo masks."""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO, Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from protoseg.io.checkpoints import read_checkpoint
from protoseg.lightning_modules.ddp_layout import channels_last_under_ddp
from protoseg.lightning_modules.evaluation import (
    IMAGENET_NORMALIZATION,
    Normalization,
    batch_rgb,
    log_gathered,
    log_overlay,
    prediction_items,
    require_instances,
    require_labelled_crops,
)
from protoseg.lightning_modules.hparams import save_init_hyperparameters
from protoseg.lightning_modules.legacy import upgrade_segmentation_checkpoint
from protoseg.lightning_modules.time_budget import warmup_cosine_optimization
from protoseg.metrics import NucleiMetrics
from protoseg.modules.losses import CEDiceLoss
from protoseg.modules.postprocess_pool import PostprocessPool, Workers
from protoseg.modules.tiling import predict_tiled_net
from protoseg.postprocess import (
    InstanceSplit,
    ThreeClassWatershed,
    score_instances,
    split_and_score,
)
from protoseg.postprocess.sam_refine import SamRefinement

Batch = dict[str, Any]


class SegmentationModule(L.LightningModule):
    """Trains a 3-class (background / inside / boundary) network and outputs nuclei instances.

    Training batches come from any datamodule that yields ``image`` (B, 3, h, w) and
    ``target`` (B, h, w) class ids — true labels or pseudo masks alike. Validation, test and
    prediction run on whole images (tiled when large) and turn probabilities into instances
    with the ``postprocess`` strategy, so that AJI, object Dice and PQ are meaningful.

    Args:
        net: dense network mapping (B, 3, H, W) to logits (B, 3, H, W); e.g.
            :class:`protoseg.modules.networks.UNet`.
        loss: loss of logits against class ids; defaults to cross-entropy + Dice.
        optimizer: optimizer factory taking the parameters; default AdamW(lr=1e-3,
            weight_decay=1e-4).
        warmup_steps: linear learning-rate warm-up; a cosine decay to zero follows over the
            rest of ``trainer.estimated_stepping_batches``, or ends at ``trainer.max_time``
            when that comes first (:mod:`~protoseg.lightning_modules.time_budget`).
        postprocess: how probabilities become instances, a strategy of
            :mod:`protoseg.postprocess` (``class_path`` + ``init_args`` in a config):
            :class:`~protoseg.postprocess.three_class.ThreeClassWatershed` (the default, for
            heads trained on true labels),
            :class:`~protoseg.postprocess.distance.DistanceSplit` (heads trained on pseudo
            masks) or :class:`~protoseg.postprocess.centre_guided.CentreGuidedSplit` (the
            distance split guided by a frozen centre detector, whose weights then travel in
            this module's checkpoint). What each setting measured: ``docs/postprocessing.md``.
        tile_size: inference tile side for whole images; 1024 covers a MoNuSeg image at once.
        tile_overlap: px shared by neighbouring inference tiles.
        num_log_images: validation images drawn to TensorBoard per validation run.
        normalization: the datamodule's (mean, std), used only to draw the logged images.
        postprocess_workers: processes that split (and score) validation and test images
            while the network goes on to the next batch, and split the images of a
            prediction batch of several (slide tiles) side by side
            (:class:`~protoseg.modules.postprocess_pool.PostprocessPool`); 0 splits them in
            this process; ``auto`` half the cores this process may use (its affinity mask's
            or SLURM's share, split among the DDP ranks on the node), at least 2
            (:func:`~protoseg.modules.postprocess_pool.auto_workers`). The figures and maps
            are the same either way. Worth it when cores idle while the split runs, e.g. on a
            GPU machine; each worker holds a few images' probabilities (~25 MB for 1000 x
            1000 px).
        refine: composed after the split: e.g.
            :class:`~protoseg.postprocess.sam_refine.SamRefinement`, Segment Anything redraws
            each object (off by default: it costs many times the split, docs/nuclei.md). It
            runs in this process, on the images as the datamodule gave them (un-normalised
            with ``normalization``), in validation, test and prediction. An inference-time
            choice: not kept in the checkpoint's hyperparameters, so a checkpoint never turns
            it on or off; the config or ``--model.init_args.refine`` does.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module | None = None,
        optimizer: OptimizerCallable | None = None,
        warmup_steps: int = 100,
        postprocess: InstanceSplit | None = None,
        tile_size: int = 1024,
        tile_overlap: int = 128,
        num_log_images: int = 2,
        normalization: Normalization = IMAGENET_NORMALIZATION,
        postprocess_workers: Workers = 0,
        refine: SamRefinement | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= tile_overlap < tile_size:
            raise ValueError(
                f"tile_overlap must be in [0, tile_size={tile_size}), got {tile_overlap}"
            )
        self.pool = PostprocessPool(postprocess_workers)
        save_init_hyperparameters(self)
        self.hparams.pop("refine", None)  # an inference-time choice (see refine above)
        self.net = net
        self.refine = refine
        self.postprocess = postprocess if postprocess is not None else ThreeClassWatershed()
        given = self.hparams.get("postprocess")
        if isinstance(given, dict):  # built by the CLI: complete its config for the checkpoint
            self.hparams["postprocess"] = self.postprocess.complete_config(given)
        self.loss = loss if loss is not None else CEDiceLoss()
        self.optimizer_factory = optimizer
        self.val_metrics = NucleiMetrics(prefix="val/")
        self.test_metrics = NucleiMetrics(prefix="test/")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, 3, H, W) for images (B, 3, H, W) of any size."""
        return predict_tiled_net(
            self.net, images, self.hparams.tile_size, self.hparams.tile_overlap
        )

    def setup(self, stage: str) -> None:
        """Shares the post-processing workers' cores among the trainer's processes on this
        node (its DDP ranks each run a pool), lays the weights out channels-last for a DDP fit
        (:mod:`~protoseg.lightning_modules.ddp_layout`), refuses a fit on images without
        labels or pseudo masks, and has the post-processing load its networks' weights
        before a fit (a checkpoint restores them after) or check them before the other
        stages; loads the refinement's model, so that a wrong file stops the run first."""
        if self._trainer is not None:
            self.pool.share(max(1, self._trainer.num_devices))
        channels_last_under_ddp(self, stage)
        datamodule = getattr(self._trainer, "datamodule", None)
        data = dict(getattr(datamodule, "hparams", {}))
        if stage == "fit":
            require_labelled_crops(self.trainer, "SegmentationModule")
            self.postprocess.prepare_fit(data)
        else:
            self.postprocess.check(data)
        if self.refine is not None:
            self.refine.load()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Reads a checkpoint of the module before its post-processing was a part
        (:func:`~protoseg.lightning_modules.legacy.upgrade_segmentation_checkpoint`)."""
        upgrade_segmentation_checkpoint(checkpoint)

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path | IO[bytes], *args: Any, **kwargs: Any
    ) -> SegmentationModule:
        """Lightning's ``load_from_checkpoint``, which also reads a checkpoint saved before
        the post-processing was a part (upgraded in memory, the file left as it is)."""
        if isinstance(checkpoint_path, (str, Path)):
            checkpoint = read_checkpoint(checkpoint_path)  # weights_only, the file named
        else:
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if upgrade_segmentation_checkpoint(checkpoint) is not None:
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            buffer.seek(0)
            checkpoint_path = buffer
        elif hasattr(checkpoint_path, "seek"):
            checkpoint_path.seek(0)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def split_inputs(self, images: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Each image's class probabilities (3, H, W) and what the post-processing's own
        networks see in it (:meth:`~protoseg.postprocess.base.InstanceSplit.guide`, or None)."""
        hp = self.hparams
        probs = self(images).float().softmax(dim=1).cpu().numpy()
        guide = self.postprocess.guide(images, hp.tile_size, hp.tile_overlap)
        return [(p, None if guide is None else guide[i]) for i, p in enumerate(probs)]

    def predict_instances(self, images: torch.Tensor) -> list[np.ndarray]:
        """Instance maps, one (H, W) int32 array per image of (B, 3, H, W), split (and
        refined) in this process (``postprocess_workers`` serves the trainer's loops)."""
        split = [self.postprocess(probs, guide) for probs, guide in self.split_inputs(images)]
        return self.refined(images, split)

    def refined(self, images: torch.Tensor, instances: list[np.ndarray]) -> list[np.ndarray]:
        """Each image's instance map after ``refine`` (as it is without one), in this
        process: the refinement's model runs on the images (B, 3, H, W) un-normalised."""
        if self.refine is None:
            return instances
        rgb = batch_rgb({"image": images}, self.hparams.normalization)
        return [self.refine(image, objects) for image, objects in zip(rgb, instances, strict=True)]

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        require_instances(batch, "SegmentationModule")
        images = batch["image"].contiguous(memory_format=torch.channels_last)
        # Under bf16 autocast the logits are bf16; the loss is computed in float32.
        loss = self.loss(self.net(images).float(), batch["target"])
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def _score(self, batch: Batch, metrics: NucleiMetrics, log_index: int | None = None) -> None:
        """Queues the batch's images for splitting and scoring; :meth:`_collect` adds their
        scores to ``metrics``. With ``log_index`` the first image's split is drawn too, as
        ``val/overlay_<log_index>``."""
        split = self.postprocess.detached()
        targets = [t.cpu().numpy() for t in batch["instances"]]
        inputs = self.split_inputs(batch["image"])
        refined = None
        if self.refine is not None:  # split here: the refinement needs its instances
            refined = self.refined(batch["image"], [split(p, maps) for p, maps in inputs])
        for i, (probs, maps) in enumerate(inputs):
            overlay = None
            if log_index is not None and i == 0:
                first = {"image": batch["image"][:1].cpu(), "instances": batch["instances"][:1]}
                overlay = (first, log_index)
            if refined is None:
                args = (split, probs, maps, targets[i], metrics.iou_threshold)
                self.pool.submit(split_and_score, *args, tag=overlay)
            else:
                args = (refined[i], targets[i], metrics.iou_threshold)
                self.pool.submit(score_instances, *args, tag=overlay)
        self._collect(metrics, self.pool.ready())

    def _collect(self, metrics: NucleiMetrics, results: list[tuple]) -> None:
        """Adds the scores of finished images, in order, and draws their queued overlays."""
        for overlay, (instances, scores) in results:
            metrics.update(scores=[scores])
            if overlay is not None:
                first, index = overlay
                log_overlay(self, first, instances, index, self.hparams.normalization)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logged = batch_idx < self.hparams.num_log_images
        self._score(batch, self.val_metrics, batch_idx if logged else None)

    def on_validation_epoch_end(self) -> None:
        self._collect(self.val_metrics, self.pool.drain())
        log_gathered(self, self.val_metrics.compute())
        self.val_metrics.reset()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._score(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._collect(self.test_metrics, self.pool.drain())
        log_gathered(self, self.test_metrics.compute())
        self.test_metrics.reset()

    def teardown(self, stage: str) -> None:
        """Stops the post-processing workers at the end of a fit, validation, test or predict."""
        self.pool.close()

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        """The batch's items (``stem``, ``path``, ``instances``), in the batch's order.

        With ``postprocess_workers`` the images of a batch of several (slide tiles) are split
        side by side in the workers; a batch of one image (whole images) is split here, as
        one worker thread would be slower than this process's threads. Writers pair the
        items with the batch (:class:`~protoseg.callbacks.slide_writer.SlidePredictionWriter`
        reads its tile origins), so a batch's items never wait for a later batch.
        """
        split = self.postprocess.detached()
        inputs = self.split_inputs(batch["image"])
        if len(inputs) == 1 or self.pool.workers == 0:
            instances = [split(probs, maps) for probs, maps in inputs]
        else:
            for probs, maps in inputs:
                self.pool.submit(split_and_score, split, probs, maps, None)
            instances = [objects for _, (objects, _) in self.pool.drain()]
        return prediction_items(batch, self.refined(batch["image"], instances))

    def configure_optimizers(self) -> dict[str, Any]:
        return warmup_cosine_optimization(
            self,
            (p for p in self.parameters() if p.requires_grad),
            self.optimizer_factory,
            self.hparams.warmup_steps,
            1e-3,
        )
