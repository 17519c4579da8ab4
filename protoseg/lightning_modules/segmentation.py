"""Segmentation head: a dense network trained on true labels or on any stage's pseudo masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from protoseg.lightning_modules.ddp_layout import channels_last_under_ddp
from protoseg.lightning_modules.evaluation import (
    IMAGENET_NORMALIZATION,
    Normalization,
    log_gathered,
    log_overlay,
    prediction_items,
    require_instances,
    require_labelled_crops,
)
from protoseg.lightning_modules.hparams import save_init_hyperparameters
from protoseg.lightning_modules.time_budget import warmup_cosine_optimization
from protoseg.metrics import NucleiMetrics
from protoseg.modules.centres import centre_maps
from protoseg.modules.instance_split import InstanceSplit, split_and_score
from protoseg.modules.losses import CEDiceLoss
from protoseg.modules.postprocess_pool import PostprocessPool, Workers
from protoseg.modules.tiling import predict_tiled_net

Batch = dict[str, Any]


def _as_list(threshold: float | list[float]) -> list[float]:
    """One foreground threshold or several, as a list."""
    return [float(t) for t in threshold] if isinstance(threshold, (list, tuple)) else [threshold]


def load_centre_weights(net: nn.Module, path: str | None) -> None:
    """Loads a centre detector's weights into ``net`` from a Lightning checkpoint of
    :class:`~protoseg.lightning_modules.centre_detector.CentreDetectorModule` (its ``net.*``
    entries) or a plain state dict of ``net``; names the file on any mismatch."""
    if path is None:
        raise ValueError("centre_net needs centre_weights: the detector's checkpoint")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: centre detector checkpoint not found (centre_weights)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: pickle, zip or torch errors
        raise ValueError(f"{file}: not a readable torch checkpoint: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{file}: holds a {type(state).__name__}, not a checkpoint or state dict")
    if "state_dict" in state:  # a Lightning checkpoint: the detector module's ``net.*``
        state = state["state_dict"]
        state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{file}: weights do not fit centre_net: {error}") from error


class SegmentationModule(L.LightningModule):
    """Trains a 3-class (background / inside / boundary) network and outputs nuclei instances.

    Training batches come from any datamodule that yields ``image`` (B, 3, h, w) and
    ``target`` (B, h, w) class ids — true labels or pseudo masks alike. Validation, test and
    prediction run on whole images (tiled when large) and turn probabilities into instances
    with :func:`three_class_to_instances`, so that AJI, object Dice and PQ are meaningful.

    Args:
        net: dense network mapping (B, 3, H, W) to logits (B, 3, H, W); e.g.
            :class:`protoseg.modules.networks.UNet`.
        loss: loss of logits against class ids; defaults to cross-entropy + Dice.
        optimizer: optimizer factory taking the parameters; default AdamW(lr=1e-3,
            weight_decay=1e-4).
        warmup_steps: linear learning-rate warm-up; a cosine decay to zero follows over the
            rest of ``trainer.estimated_stepping_batches``, or ends at ``trainer.max_time``
            when that comes first (:mod:`~protoseg.lightning_modules.time_budget`).
        marker_threshold: inside probability that seeds a nucleus (post-processing).
        foreground_threshold: ``1 - p(background)`` above which a pixel is nuclear
            (post-processing, both splits). A head trained on pseudo masks spreads its
            foreground over thin bridges between neighbouring nuclei; 0.6 rather than 0.5
            cuts many of them: AJI +0.011 and +0.014 for two PSM-mask heads on the 30
            training images (better on 22 of 30 images; labels only scored), +0.004 for a
            patch-contrast head, pixel Dice within 0.001. A list of thresholds splits the
            image at each, and every connected piece of foreground keeps the split whose
            objects there are the most convex
            (:func:`~protoseg.modules.postprocess.most_convex_candidates`): on three PSM
            heads with the vote detector (30 training images, labels only scored), thresholds
            0.2 to 0.95 against 0.6 alone lifted AJI 0.492 -> 0.506, 0.491 -> 0.508 and
            0.497 -> 0.511, object Dice by 0.012-0.015, PQ by 0.009-0.016; each threshold
            costs one more split per image (~0.5 s for 1000 x 1000 px; the splits run in
            ``torch.get_num_threads()`` threads).
        min_area: smallest nucleus kept, in px.
        min_peak_probability: when set, objects whose highest ``1 - p(background)`` stays
            below it are dropped (:func:`~protoseg.modules.postprocess.drop_unsure_objects`;
            both splits). At 0.99 on two PSM-mask heads (30 training images, labels only
            scored): AJI +0.006 / +0.004, object Dice +0.008 / +0.005, PQ +0.05.
        instance_split: how touching nuclei are separated. ``"three_class"``: seeds from the
            *inside* class, grown over the boundary class (for heads trained on true
            instance labels). ``"distance"``: the foreground alone, split by a watershed on
            its distance transform (:func:`~protoseg.modules.pseudo_masks.binary_to_instances`).
            Pseudo masks merge touching nuclei, so a head trained on them learns weak
            boundaries; on the PSM chain the distance split lifts AJI on the 30 training
            images from 0.319 to 0.418 (labels only scored both).
        min_distance: smallest distance between two nucleus centres, px (``"distance"``).
        outline_opening: when > 0, each object of the final map is opened by a disc of this
            radius, px (:func:`~protoseg.modules.postprocess.open_objects`), trimming jagged
            outlines and watershed slivers. At 3 px on four PSM head and detector pairs (30
            training images, labels only scored): AJI +0.004 to +0.005, object Dice +0.003,
            PQ +0.004 to +0.006.
        centre_net: a nucleus-centre detector's network (a heatmap logit first, e.g. the ``net`` of
            :class:`~protoseg.lightning_modules.centre_detector.CentreDetectorModule`);
            its heatmap reshapes the distance split's landscape (``centre_offset`` +
            heatmap, see :func:`~protoseg.modules.pseudo_masks.binary_to_instances`), so
            fused clumps are cut between the nuclei it sees. Frozen: its weights come from
            ``centre_weights`` when a fit starts and travel in this module's checkpoint.
            On three PSM heads (30 training images, labels only scored) AJI rose by
            0.017-0.026 with ``centre_offset`` 0.25 and ``min_distance`` 7.
        centre_weights: the detector's Lightning checkpoint (or a state dict of
            ``centre_net``); needed to fit with ``centre_net``.
        centre_offset: the landscape's weight where the detector sees no centre.
        centre_votes: the detector also regresses centre offsets (``centre_net`` with 3
            outputs, ``offset_weight`` > 0 in its module): the landscape then reads the mean
            of its heatmap and the votes of this head's foreground pixels
            (:func:`~protoseg.modules.centre_votes.vote_heatmap`). On the PSM benchmark head
            with two detector seeds (30 training images, labels only scored): AJI 0.486 ->
            0.492 and 0.485 -> 0.489, object Dice +0.005 to +0.007, PQ +0.008 to +0.013.
            With several ``foreground_threshold`` values the per-piece choice also reads
            where the pixels vote (``offsets`` of
            :func:`~protoseg.modules.postprocess.most_convex_candidates`).
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
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module | None = None,
        optimizer: OptimizerCallable | None = None,
        warmup_steps: int = 100,
        marker_threshold: float = 0.5,
        foreground_threshold: float | list[float] = 0.5,
        min_area: int = 10,
        min_peak_probability: float | None = None,
        instance_split: str = "three_class",
        min_distance: int = 5,
        outline_opening: int = 0,
        centre_net: nn.Module | None = None,
        centre_weights: str | None = None,
        centre_offset: float = 0.25,
        centre_votes: bool = False,
        tile_size: int = 1024,
        tile_overlap: int = 128,
        num_log_images: int = 2,
        normalization: Normalization = IMAGENET_NORMALIZATION,
        postprocess_workers: Workers = 0,
    ) -> None:
        super().__init__()
        if not 0 <= tile_overlap < tile_size:
            raise ValueError(
                f"tile_overlap must be in [0, tile_size={tile_size}), got {tile_overlap}"
            )
        thresholds = _as_list(foreground_threshold)
        if not thresholds or not all(0.0 < t < 1.0 for t in thresholds):
            raise ValueError(
                f"foreground_threshold must be in (0, 1), or a non-empty list of such values, "
                f"got {foreground_threshold}"
            )
        if min_peak_probability is not None and not 0.0 < min_peak_probability < 1.0:
            raise ValueError(
                f"min_peak_probability must be None or in (0, 1), got {min_peak_probability}"
            )
        if instance_split not in ("three_class", "distance"):
            raise ValueError(
                f"instance_split must be 'three_class' or 'distance', got {instance_split!r}"
            )
        if centre_net is not None and instance_split != "distance":
            raise ValueError("centre_net shapes the distance split: set instance_split: distance")
        if outline_opening < 0:
            raise ValueError(f"outline_opening must be >= 0, got {outline_opening}")
        if centre_offset <= 0:
            raise ValueError(f"centre_offset must be > 0, got {centre_offset}")
        if centre_votes and centre_net is None:
            raise ValueError("centre_votes reads the centre detector's offsets: set centre_net")
        self.pool = PostprocessPool(postprocess_workers)
        save_init_hyperparameters(self)
        self.net = net
        self.centre_net = centre_net
        if centre_net is not None:
            centre_net.requires_grad_(False)
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
        labels or pseudo masks, and loads the centre detector's weights before a fit (a
        checkpoint restores them after)."""
        if self._trainer is not None:
            self.pool.share(max(1, self._trainer.num_devices))
        channels_last_under_ddp(self, stage)
        if stage == "fit":
            require_labelled_crops(self.trainer, "SegmentationModule")
        if stage == "fit" and self.centre_net is not None:
            load_centre_weights(self.centre_net, self.hparams.centre_weights)

    def centre_maps(self, images: torch.Tensor) -> np.ndarray | None:
        """The centre detector's outputs (B, C, H, W): heatmap in [0, 1], then any offsets
        (:func:`~protoseg.modules.centres.centre_maps`); None without a detector."""
        if self.centre_net is None:
            return None
        hp = self.hparams
        # The frozen detector always runs on its BatchNorm running statistics, whatever this
        # module's mode. It keeps this module's mode otherwise: it runs only in validation and
        # prediction, and a submodule in eval mode at the start of a fit makes Lightning warn.
        mode = self.centre_net.training
        self.centre_net.eval()
        try:
            return centre_maps(self.centre_net, images, hp.tile_size, hp.tile_overlap)
        finally:
            self.centre_net.train(mode)

    @property
    def splitter(self) -> InstanceSplit:
        """The post-processing settings of :attr:`hparams` as an :class:`InstanceSplit`."""
        hp = self.hparams
        return InstanceSplit(
            foreground_thresholds=tuple(_as_list(hp.foreground_threshold)),
            instance_split=hp.instance_split,
            marker_threshold=hp.marker_threshold,
            min_area=hp.min_area,
            min_distance=hp.min_distance,
            min_peak_probability=hp.min_peak_probability,
            outline_opening=hp.outline_opening,
            centre_offset=hp.centre_offset,
            centre_votes=hp.centre_votes,
        )

    def split_inputs(self, images: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Each image's class probabilities (3, H, W) and centre-detector outputs (or None)."""
        probs = self(images).float().softmax(dim=1).cpu().numpy()
        maps = self.centre_maps(images)
        return [(p, None if maps is None else maps[i]) for i, p in enumerate(probs)]

    def predict_instances(self, images: torch.Tensor) -> list[np.ndarray]:
        """Instance maps, one (H, W) int32 array per image of (B, 3, H, W), split in this
        process (``postprocess_workers`` serves the trainer's loops)."""
        split = self.splitter
        return [split(probs, maps) for probs, maps in self.split_inputs(images)]

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
        split = self.splitter
        targets = [t.cpu().numpy() for t in batch["instances"]]
        for i, (probs, maps) in enumerate(self.split_inputs(batch["image"])):
            overlay = None
            if log_index is not None and i == 0:
                first = {"image": batch["image"][:1].cpu(), "instances": batch["instances"][:1]}
                overlay = (first, log_index)
            args = (split, probs, maps, targets[i], metrics.iou_threshold)
            self.pool.submit(split_and_score, *args, tag=overlay)
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
        split = self.splitter
        inputs = self.split_inputs(batch["image"])
        if len(inputs) == 1 or self.pool.workers == 0:
            return prediction_items(batch, [split(probs, maps) for probs, maps in inputs])
        for probs, maps in inputs:
            self.pool.submit(split_and_score, split, probs, maps, None)
        return prediction_items(batch, [instances for _, (instances, _) in self.pool.drain()])

    def configure_optimizers(self) -> dict[str, Any]:
        return warmup_cosine_optimization(
            self,
            (p for p in self.parameters() if p.requires_grad),
            self.optimizer_factory,
            self.hparams.warmup_steps,
            1e-3,
        )
