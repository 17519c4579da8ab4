"""Prior self-activation maps (PSM): label-free nuclei masks and cell detection.

Chen et al., "Exploring Unsupervised Cell Recognition with Prior Self-activation Maps",
MICCAI 2023 (arXiv 2308.11144): train an activation network self-supervised, aggregate the
gradients of its shallow layers into a self-activation map, cluster map and colour into
pseudo masks, train a downstream network on them. Where the paper leaves a choice open:

- **Activation network**: :class:`~protoseg.modules.activation_net.ShallowActivationNet`,
  a ResNet-18 cut after layer2 (0.68M parameters): PSM reads only shallow layers, and the
  deeper stages would cost CPU time without shaping them.
- **Self-supervised objective**: the paper's Siamese similarity learning, in SimSiam form
  (two augmented views, projector + predictor MLPs, symmetric negative cosine with a
  stop-gradient on the target: :func:`~protoseg.modules.ssl_losses.byol_loss`), no momentum
  encoder (cheaper on CPU). Views: :class:`~protoseg.modules.ssl_augment.PathologyViewAugment`.
- **Gradient aggregation**: at inference the loss is the same objective between the image and
  a deterministic second view (mirrored and turned by 90 degrees), whose embedding is the
  stop-gradient target; its gradient w.r.t. the maps of ``activation_layers`` is aggregated
  by :func:`~protoseg.modules.psm.activation_from_gradients` (``gradcam`` channel weights by
  default: for random-init networks on a real MoNuSeg crop its map correlates with the nuclei
  at |r| 0.59-0.75, ``elementwise`` |G * A| at ~0.1), each layer upsampled and min-max
  normalised, summed,
  normalised per image. Whole images go through at once (no tiling seams).
- **Semantic clustering**: k-means (scikit-learn, ``num_clusters``, 20k sampled pixels) on
  two z-scored cues per pixel, the smoothed hematoxylin density (``cue``) and the
  activation (weighted by ``activation_weight``), the activation negated where it
  anti-correlates with the colour (its polarity is arbitrary); the cell cluster has the
  largest sum of centre cues. With ``refine_pad`` each clustered object is then redrawn at
  the Otsu threshold of the smoothed colour cue in its own neighbourhood
  (:func:`~protoseg.modules.pseudo_masks.refine_outlines_locally`): a threshold per image
  draws pale nuclei too tight and dark ones too wide, and the head learns those outlines.
  Holes are filled, objects under ``min_area`` px dropped,
  touching nuclei split by a distance-transform watershed: instance pseudo labels for the
  segmentation head. The paper's detection network is
  :class:`~protoseg.lightning_modules.centre_detector.CentreDetectorModule`, a centre heatmap
  learnt from the convex pseudo nuclei; the head's distance split reads it to cut clumps
  (we do not train on the paper's Voronoi/cluster labels: from our pseudo masks they are
  worse supervision than the masks themselves).
- **The authors' recipe** (their released code, where it differs from the paper's text):
  ``objective="rotation"`` trains a network with one output (a linear layer on the pooled
  deepest map; they use timm's ``res2net101_26w_4s``, random init) to give an image and the
  image turned by 180 degrees the same output (L1), and takes Grad-CAM of that output at
  ``layer1``; ``clustering="colour_prior"`` is their k-means of jet-coloured map plus RGB
  (:func:`~protoseg.modules.psm.colour_prior_mask`), objects under 200 px removed and holes
  filled. ``configs/psm/monuseg_authors.yaml`` runs it; docs/psm_recipes.md compares the
  two.
- **Multi-class detection**: cell centroids, classed by a k-means on per-cell mean DAB
  density into ``num_cell_classes`` (class 0 the least stained); for IHC (BCData)
  ``cue="density"`` makes brown and blue nuclei both cells.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from protoseg.lightning_modules.evaluation import (
    IMAGENET_NORMALIZATION,
    Batch,
    Normalization,
    batch_rgb,
    log_gathered,
    log_overlay,
    prediction_items,
    update_metrics,
)
from protoseg.lightning_modules.hparams import save_init_hyperparameters
from protoseg.lightning_modules.ssl_base import SSLModule
from protoseg.metrics import NucleiMetrics
from protoseg.metrics.detection import DetectionMetrics
from protoseg.modules.heads import MLPHead
from protoseg.modules.pseudo_masks import (
    binary_to_instances,
    clean_binary,
    refine_outlines_locally,
)
from protoseg.modules.psm import (
    AggregationMode,
    Clustering,
    Cue,
    cell_points,
    classify_cells,
    colour_prior_mask,
    gradient_activation_map,
    psm_binary_mask,
    smoothed_cell_cue,
)
from protoseg.modules.ssl_augment import PathologyViewAugment
from protoseg.modules.ssl_losses import byol_loss

Objective = Literal["siamese", "rotation"]


def check_view_normalization(augment: nn.Module, normalization: Normalization) -> None:
    """Refuses views normalised otherwise than the images: the activation network trains
    on the views and its maps are read on the images (the command line links both to the
    datamodule's ``mean`` and ``std``)."""
    views = tuple(
        tuple(float(v) for v in getattr(augment, key).flatten())
        for key in ("mean", "std")
        if isinstance(getattr(augment, key, None), torch.Tensor)
    )
    images = tuple(tuple(float(v) for v in values) for values in normalization)
    if len(views) == 2 and not np.allclose(views, images, atol=1e-6):
        raise ValueError(
            f"augment normalises the views with mean {views[0]} and std {views[1]}, the "
            f"images are normalised with {images[0]} and {images[1]}: give augment the "
            "datamodule's mean and std"
        )


class PSMModule(SSLModule):
    """Trains the activation network on images alone; predicts PSM pseudo masks and cells.

    Batches hold ``image`` (B, 3, H, W) normalised with ``normalization`` (views are drawn
    from the de-normalised RGB). Labels never train: ``instances`` (MoNuSeg) or ``points`` and
    ``point_classes`` (BCData) only score validation. ``predict`` yields instance maps,
    binary masks and cell points for
    :class:`~protoseg.callbacks.prediction_writer.InstancePredictionWriter`, whose output
    folder is the segmentation head's ``pseudo_mask_dir``.

    Args:
        backbone: returns a list of feature maps, shallowest first, and has ``num_features``
            (channels of the last map), e.g. ``ShallowActivationNet``.
        augment: view augmentation of [0, 1] RGB; default PathologyViewAugment at 128 px.
        optimizer: optimizer factory; default AdamW(lr=1e-3 per 256 images, wd=1e-4).
        objective: ``siamese`` (SimSiam between two views; the activation is the gradient
            of that loss against a turned, mirrored view) or ``rotation`` (the authors' code:
            one output per image, L1 between the image and the image turned by 180 degrees;
            the activation is the gradient of that output).
        clustering: ``cue`` (k-means on ``cue`` and activation, then ``refine_pad``) or
            ``colour_prior`` (the authors', :func:`~protoseg.modules.psm.colour_prior_mask`).
        projection_hidden_dim: hidden width of projector and predictor (``siamese``).
        projection_dim: embedding width (``siamese``).
        activation_layers: indices of the backbone maps whose gradients make the PSM.
        aggregation: ``elementwise`` or ``gradcam`` (see the module docstring).
        num_clusters: k of the pixel k-means.
        activation_weight: weight of the activation cue against the colour cue (0.5: on two
            real crops 1.0 let a random-init map hurt the masks, 0.5 helped or was neutral).
        cue: colour cue, ``hematoxylin`` (H&E) or ``density`` (IHC).
        smooth_sigma: Gaussian smoothing of the colour cue, px.
        refine_pad: when set, each clustered object is redrawn at the Otsu threshold of the
            smoothed colour cue in its bounding box grown by this many px
            (:func:`~protoseg.modules.pseudo_masks.refine_outlines_locally`); None keeps the
            clustering's outlines.
        min_area: smallest cell kept, px.
        min_distance: smallest distance between the centres of split touching cells, px.
        num_cell_classes: cell classes of the detection output.
        detection_radius: match distance of the detection scores, px.
        cluster_seed: seed of both k-means.
        warmup_steps: linear learning-rate warm-up.
        base_lr_batch_size: the batch size the optimizer's lr is given for.
        num_log_images: validation overlays drawn to TensorBoard.
        normalization: the datamodule's (mean, std) on [0, 1] RGB (linked to it by the
            command line, as are ``augment``'s ``mean`` and ``std``; views normalised
            otherwise than the images are refused).
    """

    def __init__(
        self,
        backbone: nn.Module,
        augment: nn.Module | None = None,
        optimizer: OptimizerCallable | None = None,
        objective: Objective = "siamese",
        clustering: Clustering = "cue",
        projection_hidden_dim: int = 512,
        projection_dim: int = 128,
        activation_layers: tuple[int, ...] = (0, 1),
        aggregation: AggregationMode = "gradcam",
        num_clusters: int = 2,
        activation_weight: float = 0.5,
        cue: Cue = "hematoxylin",
        smooth_sigma: float = 1.0,
        refine_pad: int | None = None,
        min_area: int = 30,
        min_distance: int = 5,
        num_cell_classes: int = 1,
        detection_radius: float = 6.0,
        cluster_seed: int = 0,
        warmup_steps: int = 50,
        base_lr_batch_size: int = 256,
        num_log_images: int = 2,
        normalization: Normalization = IMAGENET_NORMALIZATION,
    ) -> None:
        mean, std = normalization
        if augment is None:
            augment = PathologyViewAugment(size=128, scale=(0.2, 1.0), mean=mean, std=std)
        check_view_normalization(augment, normalization)
        super().__init__(backbone, augment, optimizer, warmup_steps, base_lr_batch_size)
        if objective not in ("siamese", "rotation"):
            raise ValueError(f"objective must be 'siamese' or 'rotation', got {objective!r}")
        if clustering not in ("cue", "colour_prior"):
            raise ValueError(f"clustering must be 'cue' or 'colour_prior', got {clustering!r}")
        save_init_hyperparameters(self)
        width = backbone.num_features
        if objective == "siamese":
            self.projector = MLPHead(width, projection_hidden_dim, projection_dim)
            self.predictor = MLPHead(projection_dim, projection_hidden_dim, projection_dim)
        else:
            self.output = nn.Linear(width, 1)
        self.val_metrics = NucleiMetrics(prefix="val/")
        self.test_metrics = NucleiMetrics(prefix="test/")
        self.val_detection = DetectionMetrics(num_cell_classes, detection_radius, "val/det_")
        self._scored: set[str] = set()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def fit_figures(self) -> dict[str, Any]:
        """The activation network's size, as ``protoseg chain`` records it."""
        return {"backbone_parameters": sum(p.numel() for p in self.backbone.parameters())}

    def embed(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projection z and prediction p (B, D) from the backbone's maps (deepest pooled)."""
        z = self.projector(maps[-1].mean(dim=(2, 3)))
        return z, self.predictor(z)

    def rotation_output(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The ``rotation`` objective's one output per image (B,) from the backbone's maps."""
        return self.output(maps[-1].mean(dim=(2, 3))).squeeze(1)

    def make_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        rgb = (images * self.std + self.mean).clamp(0.0, 1.0)
        return list(self.augment(rgb.repeat(2, 1, 1, 1)).chunk(2))

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        # Views only for training: evaluation batches are whole images.
        if self._trainer is not None and self.trainer.training:
            return super().on_after_batch_transfer(batch, dataloader_idx)
        return batch

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        view1, view2 = batch["views"]
        if self.hparams.objective == "rotation":
            turned = torch.rot90(view1, 2, (2, 3))
            maps = self.backbone(torch.cat([view1, turned]))
            output, output_turned = self.rotation_output(maps).float().chunk(2)
            loss = (output - output_turned).abs().mean()
            self.log_step(loss, maps[-1][: len(view1)].mean(dim=(2, 3)))
            return loss
        z, p = self.embed(self.backbone(torch.cat([view1, view2])))
        (z1, z2), (p1, p2) = z.chunk(2), p.chunk(2)
        loss = (byol_loss(p1, z2.detach()) + byol_loss(p2, z1.detach())) / 2
        self.log_step(loss, z1)
        return loss

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Prior self-activation maps (B, 1, H, W) in [0, 1] of normalised images; runs with
        gradients even under ``inference_mode`` and BatchNorm in eval mode (maps per image)."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                x = images.detach().clone()
                if self.hparams.objective == "rotation":
                    maps = self.backbone(x)
                    loss = self.rotation_output(maps).sum()
                else:
                    with torch.no_grad():
                        turned = torch.rot90(x.flip(3), 1, (2, 3))
                        target, _ = self.embed(self.backbone(turned))
                    maps = self.backbone(x)
                    _, prediction = self.embed(maps)
                    loss = byol_loss(prediction, target)
                layers = [maps[i] for i in self.hparams.activation_layers]
                return gradient_activation_map(layers, loss, x.shape[-2:], self.hparams.aggregation)
        finally:
            self.train(was_training)

    def predict_masks(self, batch: Batch) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Instance maps (H, W) int32 and binary masks (H, W) bool of a batch of images."""
        hp = self.hparams
        activations = self(batch["image"]).cpu().numpy()[:, 0]
        instances, binaries = [], []
        for activation, rgb in zip(activations, batch_rgb(batch, hp.normalization), strict=True):
            # One colour deconvolution per image serves the clustering and the refinement.
            colour = smoothed_cell_cue(rgb, hp.cue, hp.smooth_sigma)
            if hp.clustering == "colour_prior":
                binary = colour_prior_mask(rgb, activation, hp.num_clusters, hp.cluster_seed)
            else:
                binary = psm_binary_mask(
                    colour, activation, hp.num_clusters, hp.activation_weight, hp.cluster_seed
                )
            binary = clean_binary(binary, hp.min_area)
            if hp.refine_pad is not None:
                binary = refine_outlines_locally(colour, binary, hp.refine_pad)
                binary = clean_binary(binary, hp.min_area)
            binaries.append(binary)
            instances.append(binary_to_instances(binary, hp.min_distance))
        return instances, binaries

    def predict_cells(
        self, batch: Batch, instances: list[np.ndarray]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Cell centroids (N, 2) as (x, y) and classes (N,) of each image's instances."""
        points, classes = [], []
        for rgb, inst in zip(batch_rgb(batch, self.hparams.normalization), instances, strict=True):
            points.append(cell_points(inst))
            classes.append(
                classify_cells(rgb, inst, self.hparams.num_cell_classes, self.hparams.cluster_seed)
            )
        return points, classes

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        instances, _ = self.predict_masks(batch)
        if "instances" in batch:
            update_metrics(self.val_metrics, instances, batch)
            self._scored.add("masks")
            if batch_idx < self.hparams.num_log_images:
                log_overlay(self, batch, instances[0], batch_idx, self.hparams.normalization)
        if "points" in batch:
            points, classes = self.predict_cells(batch, instances)
            self.val_detection.update(
                [torch.from_numpy(p) for p in points],
                batch["points"],
                [torch.from_numpy(c) for c in classes],
                batch.get("point_classes"),
            )
            self._scored.add("points")

    def on_validation_epoch_end(self) -> None:
        if "masks" in self._scored:
            log_gathered(self, self.val_metrics.compute())
        if "points" in self._scored:
            log_gathered(self, self.val_detection.compute())
        self.val_metrics.reset()
        self.val_detection.reset()
        self._scored.clear()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        update_metrics(self.test_metrics, self.predict_masks(batch)[0], batch)

    def on_test_epoch_end(self) -> None:
        log_gathered(self, self.test_metrics.compute())
        self.test_metrics.reset()

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        instances, binaries = self.predict_masks(batch)
        points, classes = self.predict_cells(batch, instances)
        return prediction_items(
            batch, instances, binary=binaries, points=points, point_classes=classes
        )
