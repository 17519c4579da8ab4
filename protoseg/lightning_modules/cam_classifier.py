"""Multi-label tissue classifier with Attention Dropout, trained on image-level labels; its class
activation maps are the first pseudo masks of the CAM + SAM chain (EP-SAM / EPLC-SAM)."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from protoseg.io.class_maps import TissueClasses, colour_classes, overlay_classes
from protoseg.lightning_modules.evaluation import (
    IMAGENET_NORMALIZATION,
    Normalization,
    batch_rgb,
    log_gathered,
)
from protoseg.lightning_modules.hparams import save_init_hyperparameters
from protoseg.lightning_modules.time_budget import warmup_cosine_optimization
from protoseg.metrics.tissue import TissueMetrics
from protoseg.modules.cam import bright_background, rotation_averaged_cams
from protoseg.modules.cam_sam import cam_class_map
from protoseg.modules.image_labels import balanced_pos_weight, midpoint_logits
from protoseg.visualize import cam_picture

Batch = dict[str, Any]


class CAMClassifierModule(L.LightningModule):
    """Trains a CAM network with multi-label BCE on image-level labels: a
    :class:`~protoseg.modules.cam.CAMNet` (a timm backbone with Attention Dropout) or a class
    layer on a frozen encoder (:class:`~protoseg.modules.frozen_heads.EncoderCAMNet`).

    Training batches hold ``image`` (B, 3, h, w) and ``labels`` (B, K) 0/1 (e.g.
    :class:`~protoseg.datamodules.wsss.WSSSDataModule`, whose crops are flipped, turned and
    colour-jittered). Validation batches hold one whole image with its ``mask``: the CAM
    pseudo mask of the classes present (:func:`~protoseg.modules.cam_sam.cam_class_map`) is
    scored as the chain's first stage (``val/miou``...), beside the classifier's ``val/f1``;
    TensorBoard gets image | CAMs | CAM classes of the first ``num_log_images``.

    Args:
        net: the CAM network: ``net(images)`` -> logits (B, K) and raw maps (B, K, h, w),
            with ``num_classes`` and ``normalise_cams`` (maps -> CAMs in [0, 1]).
        class_names: the K image-level classes, in the label order.
        optimizer: optimizer factory; default AdamW(lr=1e-3, weight_decay=1e-4).
        warmup_steps: linear warm-up, then cosine decay over the run.
        val_rotations: 90-degree turns averaged for validation CAMs (1 to 4).
        background_brightness: darkest-channel value from which a pixel is glass
            (:func:`~protoseg.modules.cam.bright_background`).
        min_score: CAM below which a pixel is unsure in the CAM pseudo mask.
        pos_weight: weight of each class's positive term in the BCE (torch's ``pos_weight``,
            K values), or ``balanced``: each class's count of training images without it
            over the count with it, from the datamodule's ``train_records()`` image-level
            labels when the fit starts, so that a class in few images (normal tissue in 3 of
            WSSS4LUAD's 41) weighs as much as one in most; None: 1 for every class.
        label_threshold: class probability from which an image without a given label
            (``protoseg predict`` of new images) is predicted to hold a class; its most
            probable class always. ``training``: per class, halfway between the highest
            whole-image logit of a training image without the class and the lowest of one
            with it (:func:`~protoseg.modules.image_labels.midpoint_logits`), computed from
            the datamodule's ``training_images()`` when a fit saves a checkpoint, and
            stored in it (docs/cam_sam.md). Also ``val/f1``'s threshold.
        val_labels: the image-level label of the validation CAM pseudo masks: ``given``
            (the classes of each image's mask: the pseudo masks of labelled images) or
            ``predicted`` (the classifier's own, as ``predict`` does for new images).
        num_log_images: validation images drawn to TensorBoard each epoch.
        normalization: the datamodule's mean and std (to draw images).
    """

    def __init__(
        self,
        net: nn.Module,
        class_names: list[str] = ["tumor", "stroma", "normal"],  # noqa: B006 (jsonargparse)
        optimizer: OptimizerCallable | None = None,
        warmup_steps: int = 50,
        val_rotations: int = 1,
        background_brightness: float = 200.0,
        min_score: float = 0.0,
        pos_weight: list[float] | Literal["balanced"] | None = None,
        label_threshold: float | Literal["training"] = 0.5,
        val_labels: Literal["given", "predicted"] = "given",
        num_log_images: int = 4,
        normalization: Normalization = IMAGENET_NORMALIZATION,
    ) -> None:
        super().__init__()
        if net.num_classes != len(class_names):
            raise ValueError(f"net has {net.num_classes} classes, class_names {len(class_names)}")
        if label_threshold != "training" and not (
            isinstance(label_threshold, float | int) and 0.0 <= label_threshold < 1.0
        ):
            raise ValueError(
                f"label_threshold must be in [0, 1) or 'training', got {label_threshold!r}"
            )
        if isinstance(pos_weight, str) and pos_weight != "balanced":
            raise ValueError(f"pos_weight must be K weights or 'balanced', got {pos_weight!r}")
        if isinstance(pos_weight, list) and (
            len(pos_weight) != len(class_names) or min(pos_weight) <= 0
        ):
            raise ValueError(f"pos_weight needs {len(class_names)} weights > 0, got {pos_weight}")
        if val_labels not in ("given", "predicted"):
            raise ValueError(f"val_labels must be 'given' or 'predicted', got {val_labels!r}")
        save_init_hyperparameters(self)
        self.net = net
        self.class_names = tuple(class_names)
        self.optimizer_factory = optimizer
        self.val_metrics = TissueMetrics(self.class_names, prefix="val/")
        self._f1_counts = torch.zeros(3)
        # label_threshold: training's (K,) decision logits, and the step they were computed at.
        self.label_logits: torch.Tensor | None = None
        self._calibrated_step = -1
        self.pos_weight: torch.Tensor | None = (
            torch.tensor(pos_weight, dtype=torch.float32) if isinstance(pos_weight, list) else None
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> logits (B, K) and raw class maps (B, K, h, w)."""
        return self.net(images)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if "labels" not in batch:
            raise ValueError(
                "CAMClassifierModule trains on image-level labels, and these training images "
                "have none: name them <stem>-[1, 0, 0].png as LUAD-HistoSeg does"
            )
        logits, _ = self.net(batch["image"])
        weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        loss = F.binary_cross_entropy_with_logits(
            logits.float(), batch["labels"].float(), pos_weight=weight
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        return loss

    def on_fit_start(self) -> None:
        if self.hparams.pos_weight == "balanced":
            self.pos_weight = balanced_pos_weight(training_image_labels(self.trainer.datamodule))
            rank_zero_info(f"pos_weight (balanced): {self.pos_weight.tolist()}")

    def cams(self, images: torch.Tensor, rotations: int) -> torch.Tensor:
        """(B, 3, H, W) -> normalised CAMs (B, K, H, W), averaged over ``rotations`` turns."""
        return rotation_averaged_cams(self.net, images, rotations)

    def cam_pseudo_mask(
        self, image_tensor: torch.Tensor, labels: torch.Tensor | None, rotations: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The CAM pseudo mask of one image.

        Args:
            image_tensor: (1, 3, H, W) normalised.
            labels: (K,) 0/1 image-level label, or None: the classifier's own prediction
                (:meth:`predicted_labels`).
            rotations: turns averaged.

        Returns:
            (H, W) uint8 class indices (:func:`~protoseg.modules.cam_sam.cam_class_map`),
            (K, H, W) float32 CAMs, (K,) bool classes present and (H, W, 3) uint8 image.
        """
        cams = self.cams(image_tensor, rotations)[0].float().cpu().numpy()
        if labels is None:
            present = self.predicted_labels(image_tensor)[0]
        else:
            present = labels.cpu().numpy() > 0.5
        image = batch_rgb({"image": image_tensor}, self.hparams.normalization)[0]
        background = bright_background(image, self.hparams.background_brightness)
        classes = cam_class_map(cams, present, background, self.hparams.min_score)
        return classes, cams, present, image

    def predicted_labels(self, images: torch.Tensor) -> np.ndarray:
        """(B, K) bool image-level labels the classifier predicts for whole images: class
        probability above ``label_threshold`` (logit above :meth:`decision_logits`), and
        each image's most probable class."""
        logits = self.net(images)[0].float()
        above = logits > self.decision_logits().to(logits.device)
        return (above | (logits == logits.amax(1, keepdim=True))).cpu().numpy()

    def decision_logits(self) -> torch.Tensor:
        """(K,) the logit above which a class is predicted: ``label_threshold``'s, or its
        calibration on the training images (recomputed while fitting when the weights have
        changed since; read from the checkpoint otherwise)."""
        threshold = self.hparams.label_threshold
        if threshold != "training":
            return torch.logit(torch.tensor(float(threshold))).expand(self.net.num_classes)
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        if self.label_logits is None or (fitting and self._calibrated_step != self.global_step):
            self.label_logits = self.calibrate_label_logits()
            self._calibrated_step = self.global_step
            rank_zero_info(f"label_threshold (training), logits: {self.label_logits.tolist()}")
        return self.label_logits

    def calibrate_label_logits(self) -> torch.Tensor:
        """(K,) :func:`~protoseg.modules.image_labels.midpoint_logits` of the whole training
        images (the datamodule's ``training_images()``: items with ``image`` (3, H, W) and
        ``labels`` (K,)), in eval mode."""
        source = getattr(self._trainer, "datamodule", None)
        images = getattr(source, "training_images", None)
        if not callable(images):
            raise ValueError(
                "label_threshold: training needs the training images (a datamodule with "
                "training_images(), e.g. WSSSDataModule), or a checkpoint of a fit with it"
            )
        was_training = self.training
        self.eval()
        logits, labels = [], []
        with torch.no_grad():
            for item in images():
                logits.append(self.net(item["image"][None].to(self.device))[0][0].float().cpu())
                labels.append(item["labels"] > 0.5)
        self.train(was_training)
        return midpoint_logits(torch.stack(logits), torch.stack(labels))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.hparams.label_threshold == "training":
            checkpoint["label_logits"] = self.decision_logits().tolist()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "label_logits" in checkpoint:
            self.label_logits = torch.tensor(checkpoint["label_logits"], dtype=torch.float32)
            self._calibrated_step = int(checkpoint.get("global_step", -1))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logits, _ = self.net(batch["image"])
        predicted = logits.float() > self.decision_logits().to(logits.device)
        truth = batch["labels"] > 0.5
        counts = torch.stack(
            [(predicted & truth).sum(), (predicted & ~truth).sum(), (~predicted & truth).sum()]
        )
        self._f1_counts += counts.float().cpu()
        given = batch["labels"][0] if self.hparams.val_labels == "given" else None
        classes, cams, _, image = self.cam_pseudo_mask(
            batch["image"][:1], given, self.hparams.val_rotations
        )
        self.val_metrics.update(torch.from_numpy(classes), batch["mask"][0].cpu())
        if batch_idx < self.hparams.num_log_images:
            self._log_picture(image, cams, classes, batch_idx)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        """CAM pseudo masks: per image ``stem``, ``path``, ``classes`` (H, W) uint8 indices
        and ``cams`` (K, H, W) float16; the image-level label is the batch's ``labels`` when
        it has them (training images), else the classifier's prediction."""
        items = []
        for i, (stem, path) in enumerate(zip(batch["stem"], batch["path"], strict=True)):
            labels = batch["labels"][i] if "labels" in batch else None
            classes, cams, _, _ = self.cam_pseudo_mask(
                batch["image"][i : i + 1], labels, self.hparams.val_rotations
            )
            items.append({"stem": stem, "path": path, "classes": classes, "cams": cams})
        return items

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metrics.compute()
        hits, false_pos, false_neg = (
            self.all_gather(self._f1_counts).reshape(-1, 3).sum(0)
        ).tolist()
        scores["val/f1"] = 2 * hits / max(2 * hits + false_pos + false_neg, 1.0)
        log_gathered(self, scores)
        self.val_metrics.reset()
        self._f1_counts.zero_()

    def _log_picture(
        self, image: np.ndarray, cams: np.ndarray, classes: np.ndarray, index: int
    ) -> None:
        """image | one heat map per class | CAM classes, as ``val/cam_<index>``."""
        if not isinstance(self.logger, TensorBoardLogger) or self.trainer.sanity_checking:
            return
        tissue = TissueClasses(self.class_names, background_code=len(self.class_names))
        picture = np.concatenate(
            [
                cam_picture(image, cams),
                overlay_classes(image, classes, tissue),
                colour_classes(classes, tissue),
            ],
            axis=1,
        )
        self.logger.experiment.add_image(
            f"val/cam_{index}", picture, self.global_step, dataformats="HWC"
        )

    def configure_optimizers(self) -> dict[str, Any]:
        return warmup_cosine_optimization(
            self, self.parameters(), self.optimizer_factory, self.hparams.warmup_steps, 1e-3
        )


def training_image_labels(datamodule: Any) -> np.ndarray:
    """(N, K) bool image-level labels of a datamodule's training images (``train_records()``,
    each record's ``labels``; e.g. :class:`~protoseg.datamodules.wsss.WSSSDataModule`).

    Raises:
        ValueError: the datamodule lists no training records, or one without a label.
    """
    records = getattr(datamodule, "train_records", None)
    labels = [getattr(r, "labels", None) for r in records()] if callable(records) else []
    if not labels or any(label is None for label in labels):
        raise ValueError(
            "pos_weight: balanced needs the training images' image-level labels (a datamodule "
            "with train_records(), e.g. WSSSDataModule, whose images are named <stem>-[1, 0, 0]"
            ".png); give the weights as a list instead"
        )
    return np.asarray(labels) > 0.5
