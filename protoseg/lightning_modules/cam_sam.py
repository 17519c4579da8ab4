"""Pseudo masks from a trained CAM classifier, refined by Segment Anything (EP-SAM / EPLC-SAM).

Run with ``protoseg predict`` (writes ``<stem>.png`` pseudo masks of the training images in
the dataset's codes, 255 unsure, through the tissue class-map writer) and ``protoseg
validate`` (scores the same pseudo masks against the validation masks, with the classes
present in each mask as its image-level label).
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from protoseg.io.checkpoints import check_stage_checkpoint, class_path_of, read_checkpoint
from protoseg.io.class_maps import IGNORE_INDEX
from protoseg.io.errors import DataError
from protoseg.lightning_modules.cam_classifier import CAMClassifierModule
from protoseg.lightning_modules.evaluation import log_gathered
from protoseg.metrics.tissue import TissueMetrics
from protoseg.modules.cam_sam import PromptSettings, combine_sam_masks, sam_class_masks
from protoseg.modules.sam import EmbeddingPredictor, PromptableSegmenter, SamPredictor, load_sam
from protoseg.modules.sam_encoder import SamEncoderEmbedder

Batch = dict[str, Any]


def load_classifier(path: str | Path) -> CAMClassifierModule:
    """A trained :class:`CAMClassifierModule` from its Lightning checkpoint, in eval mode.

    Raises:
        DataError: no such file, or the file is not a checkpoint of a CAM classifier
            (read with ``weights_only=True``; named with what it holds).
    """
    path = Path(path)
    state = read_checkpoint(path, "classifier checkpoint (classifier_ckpt)")
    check_stage_checkpoint(path, state, class_path_of(CAMClassifierModule), "classifier_ckpt")
    try:
        module = CAMClassifierModule.load_from_checkpoint(
            path, map_location="cpu", weights_only=True
        )
    except Exception as error:  # noqa: BLE001 - weights of another shape, named once
        raise DataError(f"{path}: not a CAMClassifierModule checkpoint ({error})") from None
    return module.eval()


def resize_maps(maps: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """(C, h, w) maps resized to (C, *size) float32 (``bilinear`` or ``nearest``)."""
    tensor = torch.from_numpy(np.ascontiguousarray(maps)).float()[None]
    return F.interpolate(tensor, size=tuple(size), mode=mode)[0].numpy()


class CamSamPseudoMaskModule(L.LightningModule):
    """CAMs of a trained classifier -> CAM pseudo masks -> (SAM masks that agree) -> pseudo masks.

    For each image: class activation maps averaged over ``rotations`` 90-degree turns and the
    CAM pseudo mask, as the classifier makes them
    (:meth:`~protoseg.lightning_modules.cam_classifier.CAMClassifierModule.cam_pseudo_mask`:
    glass by brightness, the best CAM among the image's classes); with ``sam``, every class's
    CAM regions prompt SAM tile by tile, SAM masks are kept where at least ``min_overlap`` of
    them lies in the class's CAM mask, and the kept masks overrule the CAM (see
    :mod:`protoseg.modules.cam_sam`).

    The image-level label is the batch's ``labels`` when it has one (training images named
    with their label; validation images: the classes of their mask), else the classifier's
    own prediction (probability > 0.5; at least its most probable class).

    Args:
        classifier_ckpt: checkpoint of a trained :class:`CAMClassifierModule`.
        sam: refine with Segment Anything (False: the CAM pseudo masks alone).
        sam_checkpoint: ``None`` for LiteMedSAM from the installed package, or a local SAM /
            MobileSAM / LiteMedSAM checkpoint (:func:`~protoseg.modules.sam.load_sam`).
        sam_model_type: the model ``sam_checkpoint`` must hold; None: from its keys.
        rotations: turns averaged for the CAMs (EPLC-SAM: 4).
        prompt: ``box``, ``points`` or ``box+points`` (see
            :class:`~protoseg.modules.cam_sam.PromptSettings`, as the next five).
        points_per_prompt: points drawn ∝ CAM per region.
        min_region: smallest CAM region prompted, px.
        min_overlap: EPLC-SAM's agreement threshold.
        tile: image px per SAM tile (each resized to SAM's input); 0: whole images. Unused
            when the classifier's backbone is this SAM's frozen encoder
            (:class:`~protoseg.modules.sam_encoder.SamEncoderEmbedder`): SAM then decodes
            the classifier's cached embeddings, tile by tile as they were encoded.
        uncovered: pixels no kept SAM mask covers keep the CAM's class (``cam``) or are
            unsure (``ignore``).
    """

    def __init__(
        self,
        classifier_ckpt: str,
        sam: bool = True,
        sam_checkpoint: str | None = None,
        sam_model_type: str | None = None,
        rotations: int = 4,
        prompt: Literal["box", "points", "box+points"] = "box",
        points_per_prompt: int = 50,
        min_region: int = 64,
        min_overlap: float = 0.9,
        tile: int = 256,
        uncovered: Literal["cam", "ignore"] = "cam",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.classifier: CAMClassifierModule | None = None
        self.segmenter: PromptableSegmenter | None = None
        self.settings = PromptSettings(
            prompt=prompt,
            points_per_prompt=points_per_prompt,
            min_region=min_region,
            min_overlap=min_overlap,
            tile=tile,
        )
        self.val_metrics: TissueMetrics | None = None
        self.sam_counts = {"prompts": 0, "kept": 0}

    def configure_model(self) -> None:
        """Loads the classifier and SAM when a run starts (not when the config is parsed), so
        that a missing or foreign file stops the run with one line naming it."""
        if self.classifier is not None:
            return
        self.classifier = load_classifier(self.hparams.classifier_ckpt)
        if self.hparams.sam and self.shared_embedder() is not None:
            self.segmenter = self.shared_embedder().segmenter
        elif self.hparams.sam:
            self.segmenter = load_sam(self.hparams.sam_checkpoint, self.hparams.sam_model_type)
        self.val_metrics = TissueMetrics(self.classifier.class_names, prefix="val/")

    def shared_embedder(self) -> SamEncoderEmbedder | None:
        """The classifier's frozen SAM encoder when it is this stage's SAM (same weights, no
        other model type asked): SAM then decodes the embeddings the classifier computed
        (cached) instead of encoding every tile again."""
        embedder = getattr(self.classifier.net, "embedder", None)
        if not isinstance(embedder, SamEncoderEmbedder) or self.hparams.sam_model_type:
            return None
        given = self.hparams.sam_checkpoint
        wanted = None if given is None else str(Path(given).resolve())
        return embedder if embedder.checkpoint == wanted else None

    def pseudo_mask(
        self, image_tensor: torch.Tensor, labels: torch.Tensor | None, stem: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(H, W) uint8 class indices and (K, H, W) float32 CAMs of one image.

        Args:
            image_tensor: (1, 3, H, W) normalised.
            labels: (K,) 0/1 image-level label, or None (the classifier's prediction).
            stem: seeds the point sampling, so that a rerun draws the same points.
        """
        classes, cams, present, image = self.classifier.cam_pseudo_mask(
            image_tensor, labels, self.hparams.rotations
        )
        if self.segmenter is None or present.sum() < 2:
            return classes, cams  # one class: SAM cannot change which class tissue is
        rng = np.random.default_rng(zlib.crc32(stem.encode()))
        embedder = self.shared_embedder()
        if embedder is None:
            predictor = SamPredictor(self.segmenter, self.device)
            kept, counts = sam_class_masks(
                predictor, image, cams, classes, present, self.settings, rng
            )
        else:
            kept, counts = self._sam_on_embeddings(
                embedder, image_tensor, cams, classes, present, rng
            )
        for key, value in counts.items():
            self.sam_counts[key] += value
        classes = combine_sam_masks(kept, cams, classes, self.hparams.uncovered, IGNORE_INDEX)
        return classes, cams

    def _sam_on_embeddings(
        self,
        embedder: SamEncoderEmbedder,
        image_tensor: torch.Tensor,
        cams: np.ndarray,
        classes: np.ndarray,
        present: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, dict[str, int]]:
        """:func:`~protoseg.modules.cam_sam.sam_class_masks` on the classifier's embeddings:
        prompts and filter in the resized image the encoder saw (its tiles, ``tile`` unused),
        the kept masks brought back to the image's size."""
        native = embedder.embed(embedder.pixels(image_tensor)[0])
        size = (native.shape[1] * embedder.cell, native.shape[2] * embedder.cell)
        resized_cams = resize_maps(cams, size, "bilinear")
        resized_classes = resize_maps(classes[None], size, "nearest")[0].astype(np.uint8)
        settings = replace(
            self.settings, tile=self.segmenter.input_size, overlap=embedder.tile_overlap
        )
        predictor = EmbeddingPredictor(self.segmenter, native, embedder.cell)
        kept, counts = sam_class_masks(
            predictor, None, resized_cams, resized_classes, present, settings, rng
        )
        return resize_maps(kept, classes.shape, "nearest") > 0.5, counts

    def _items(self, batch: Batch) -> list[tuple[np.ndarray, np.ndarray]]:
        labels = batch.get("labels")
        return [
            self.pseudo_mask(batch["image"][i : i + 1], None if labels is None else labels[i], stem)
            for i, stem in enumerate(batch["stem"])
        ]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        for i, (classes, _) in enumerate(self._items(batch)):
            self.val_metrics.update(torch.from_numpy(classes), batch["mask"][i].cpu())

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metrics.compute()
        counts = torch.tensor(list(self.sam_counts.values()), device=self.device)
        counts = self.all_gather(counts).reshape(-1, 2)
        prompts, kept = counts.sum(0).tolist()
        scores["val/sam_prompts"] = float(prompts)
        scores["val/sam_kept_fraction"] = kept / prompts if prompts else float("nan")
        log_gathered(self, scores)
        self.val_metrics.reset()
        self.sam_counts = dict.fromkeys(self.sam_counts, 0)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        """One item per image: ``stem``, ``path``, ``classes`` (H, W) uint8 indices (the
        class-map writer's format) and ``cams`` (K, H, W) float16."""
        return [
            {"stem": stem, "path": path, "classes": classes, "cams": cams.astype(np.float16)}
            for (classes, cams), stem, path in zip(
                self._items(batch), batch["stem"], batch["path"], strict=True
            )
        ]
