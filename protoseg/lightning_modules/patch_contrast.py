"""Patch-contrastive FCNN: label-free nuclei masks in minutes (Boserup & Selvan, NLDL 2023).

Our reading of the paper, with every choice it leaves open written down:

- **Network**: :class:`~protoseg.modules.fcnn.TinyFCNN` (10.8k parameters) outputs a
  K-class confidence map (softmax). The paper's two classes (object / background) do not
  hold on H&E: nuclei, stroma, lumen, fat and glass differ in colour, and a two- or
  three-class split follows brightness rather than stain (measured on the 30 MoNuSeg
  training images: pseudo-mask pixel Dice 0.37 with K = 3 and sampling temperature 0.1).
  We over-cluster (K = 8 in the shipped config) and name the nuclei afterwards.
- **Views**: each training crop is seen twice, with independent photometric jitter
  (brightness, contrast, saturation, per-channel gain); the second view is also turned by a
  random multiple of 90 degrees and flipped, and its confidence map is turned back, so that
  the two maps are pixel-aligned.
- **Patches and entropy sampling**: both maps are cut into ``patch_size`` squares; each
  patch is summarised by its mean class distribution and its average pixel entropy (mean of
  both views). ``patches_per_image`` patches per crop are drawn with probability
  ``softmax(-entropy / sampling_temperature)``: confident patches are the positives the
  network believes in (:func:`~protoseg.modules.patch_contrast.sample_patches_by_entropy`).
  The paper leaves the patch size open; small patches keep outlines sharp. On the 30 MoNuSeg
  training images (5-minute runs, labels only scored) pseudo-mask pixel Dice was 0.62 / 0.69
  / 0.65 with 1 / 2 / 4 px patches, AJI 0.31 / 0.37 / 0.25; the shipped config uses 2.
- **Contrastive objective**: a positive pair is one patch in both views; the negatives are
  the other patches of the batch. We maximise the mutual information of the pairs'
  distributions (IIC form, :func:`~protoseg.modules.patch_contrast.mutual_information_loss`),
  which pulls positives together and pushes different patches to different classes without
  the false negatives an explicit two-class InfoNCE would have.
- **Convergence**: information separation (Jensen-Shannon divergence, nats) within
  positives and between positive-negative pairs, smoothed by an exponential moving average.
  The paper says only that the first should be small and the second large. Fixed thresholds
  alone do not make a stopping rule here: in a 4,600-step run on the 30 MoNuSeg training
  images (128 px crops) the between-pairs separation rose to 0.54 by step ~800 and then
  held at 0.55 to the end, while the within-positives one kept drifting down (0.06 at step
  1,000, 0.04 at 4,400) and pseudo-mask pixel Dice peaked at 0.69 around steps 1,500-2,000,
  then fell to 0.66 by step 4,000. So training stops once, over the last
  ``converge_patience`` steps, the first stayed below ``converge_positive``, the second above
  ``converge_negative``, and the second gained less than ``converge_tolerance``
  (:func:`~protoseg.modules.patch_contrast.separations_converged`), after ``min_steps``.
- **Masks**: each pixel gets a nuclear score, the share of hematoxylin-positive pixels
  (colour deconvolution, per-image Otsu threshold) in the classes it belongs to, weighted by
  its class probabilities (:func:`~protoseg.modules.pseudo_masks.nuclear_score`); nuclei
  are the pixels above the score's own Otsu threshold, unless ``nuclei_class`` fixes one
  class. The binary mask is cleaned (holes filled, objects under ``min_area`` px dropped);
  with ``refine_pad`` each object is redrawn at the Otsu threshold of hematoxylin in its own
  neighbourhood (:func:`~protoseg.modules.pseudo_masks.refine_outlines_locally`), since whole
  classes pass the score threshold together and their outlines are too generous; the mask
  is split into instances by a watershed on its distance transform.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from scipy import ndimage as ndi
from torch import nn

from protoseg.lightning_modules.batch_rng import batch_rng, training_batch_index
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
from protoseg.metrics import NucleiMetrics
from protoseg.modules.patch_contrast import (
    gather_patches,
    information_separation,
    mutual_information_loss,
    patch_mean,
    pixel_entropy,
    sample_patches_by_entropy,
    separations_converged,
)
from protoseg.modules.pseudo_masks import (
    binary_to_instances,
    clean_binary,
    hematoxylin_density,
    nuclear_score,
    nuclei_from_score,
    refine_outlines_locally,
)
from protoseg.modules.tiling import predict_tiled


class PatchContrastModule(L.LightningModule):
    """Trains a tiny FCNN on images alone and turns its confidence maps into nuclei masks.

    Training batches need only ``image`` (B, 3, h, w), normalised with ``normalization``;
    labels, if the datamodule has them, only score validation. ``predict`` yields instance
    maps and binary masks for an image folder, which
    :class:`~protoseg.callbacks.prediction_writer.InstancePredictionWriter` writes as the
    ``pseudo_mask_dir`` of the segmentation head.

    Args:
        net: network mapping (B, 3, H, W) to K-class logits of the same size.
        optimizer: optimizer factory; default Adam(lr=3e-3).
        patch_size: side of the contrasted patches, px.
        patches_per_image: patches drawn per crop and step.
        sampling_temperature: entropy temperature of the patch sampler (nats).
        marginal_weight: weight of the class-balance (marginal entropy) terms.
        jitter: strength of the photometric jitter between views.
        converge_positive: separation within positives below which training may stop.
        converge_negative: separation between positive-negative pairs above which it may.
        converge_tolerance: most the between-pairs separation may still gain over the
            window for training to stop.
        converge_patience: window of the convergence test, steps; 0 never stops early.
        min_steps: steps before convergence is checked.
        ema: smoothing of the logged separations used by the convergence test.
        nuclei_class: fixed nuclei class; None scores pixels by the hematoxylin of their classes.
        refine_pad: when set, each nucleus of the mask is redrawn at the Otsu threshold of
            hematoxylin density (smoothed by 1 px) in its bounding box grown by this many px
            (:func:`~protoseg.modules.pseudo_masks.refine_outlines_locally`); None keeps the
            classes' outlines.
        min_area: smallest nucleus kept, px.
        min_distance: smallest distance between two nuclei centres when splitting clumps, px.
        tile_size: inference tile side for whole images.
        num_log_images: validation images drawn to TensorBoard per validation run.
        normalization: the datamodule's (mean, std) on [0, 1] RGB (the command line links
            it to the datamodule's).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable | None = None,
        patch_size: int = 4,
        patches_per_image: int = 256,
        sampling_temperature: float = 0.1,
        marginal_weight: float = 1.0,
        jitter: float = 0.15,
        converge_positive: float = 0.1,
        converge_negative: float = 0.3,
        converge_tolerance: float = 0.005,
        converge_patience: int = 300,
        min_steps: int = 200,
        ema: float = 0.95,
        nuclei_class: int | None = None,
        refine_pad: int | None = None,
        min_area: int = 30,
        min_distance: int = 5,
        tile_size: int = 1024,
        num_log_images: int = 2,
        normalization: Normalization = IMAGENET_NORMALIZATION,
    ) -> None:
        super().__init__()
        save_init_hyperparameters(self)
        self.net = net
        self.optimizer_factory = optimizer
        self.val_metrics = NucleiMetrics(prefix="val/")
        self.test_metrics = NucleiMetrics(prefix="test/")
        self.register_buffer("separation", torch.tensor([float("nan"), float("nan")]))
        self.separation_history: deque[torch.Tensor] = deque(maxlen=converge_patience + 1)
        self.converged_at_step: int | None = None
        mean, std = normalization
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def fit_figures(self) -> dict[str, Any]:
        """The FCNN's size, the step it converged at (None: not within the run) and its last
        separations, as ``protoseg chain`` records them."""
        return {
            "net_parameters": sum(p.numel() for p in self.net.parameters()),
            "converged_at_step": self.converged_at_step,
            "separation_positive": round(float(self.separation[0]), 4),
            "separation_negative": round(float(self.separation[1]), 4),
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, K, H, W) for normalised images of any size."""
        logits = predict_tiled(self.net, images, self.hparams.tile_size, 32, 1)
        return logits.softmax(dim=1)

    def _jitter(self, images: torch.Tensor) -> torch.Tensor:
        strength = self.hparams.jitter
        batch = images.shape[0]

        def factor(*shape: int) -> torch.Tensor:
            noise = torch.rand(batch, *shape, 1, 1, device=images.device) * 2 - 1
            return 1 + strength * noise

        rgb = images * self.std + self.mean
        grey = rgb.mean(dim=1, keepdim=True)
        rgb = grey + (rgb - grey) * factor(1)  # saturation
        mean = rgb.mean(dim=(1, 2, 3), keepdim=True)
        rgb = mean + (rgb - mean) * factor(1)  # contrast
        rgb = (rgb * factor(1) * factor(3)).clamp(0, 1)  # brightness, channel gains
        return (rgb - self.mean) / self.std

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        # Views and patches are drawn from a generator seeded per batch: a resumed run draws
        # what an uninterrupted one would (protoseg.lightning_modules.batch_rng).
        with batch_rng(self, training_batch_index(self.trainer)):
            return self._contrast(batch["image"])

    def _contrast(self, images: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        turns = int(torch.randint(4, (1,)))
        flip = bool(torch.randint(2, (1,)))
        view_b = torch.rot90(self._jitter(images), turns, dims=(2, 3))
        view_b = view_b.flip(3) if flip else view_b
        logits_a = self.net(self._jitter(images))
        logits_b = self.net(view_b)
        # Under bf16 autocast the logits are bf16, and autocast would also run the softmax
        # and the joint-distribution matmul of the loss in bf16: the objective is computed in
        # float32, outside autocast.
        with torch.autocast(images.device.type, enabled=False):
            probs_a = logits_a.float().softmax(dim=1)
            probs_b = logits_b.float().softmax(dim=1)
            probs_b = probs_b.flip(3) if flip else probs_b
            probs_b = torch.rot90(probs_b, -turns, dims=(2, 3))
            pairs_a, pairs_b, entropy = self._sample_pairs(probs_a, probs_b)
            loss = mutual_information_loss(pairs_a, pairs_b, hp.marginal_weight)
            positive, negative = information_separation(pairs_a.detach(), pairs_b.detach())
        self._track_convergence(positive, negative)
        size = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/separation_positive", self.separation[0], prog_bar=True, batch_size=size)
        self.log("train/separation_negative", self.separation[1], prog_bar=True, batch_size=size)
        self.log("train/patch_entropy", entropy.mean(), batch_size=size)
        return loss

    def _sample_pairs(
        self, probs_a: torch.Tensor, probs_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Entropy-drawn patch pairs (B * N, K) of two aligned maps; patch entropies (B, P)."""
        hp = self.hparams
        patches_a = patch_mean(probs_a, hp.patch_size)
        patches_b = patch_mean(probs_b, hp.patch_size)
        entropy = (pixel_entropy(probs_a) + pixel_entropy(probs_b)).unsqueeze(1) / 2
        entropy = patch_mean(entropy, hp.patch_size)[:, 0]
        count = min(hp.patches_per_image, entropy.shape[1])
        indices = sample_patches_by_entropy(entropy, count, hp.sampling_temperature)
        return gather_patches(patches_a, indices), gather_patches(patches_b, indices), entropy

    def _track_convergence(self, positive: torch.Tensor, negative: torch.Tensor) -> None:
        hp = self.hparams
        current = torch.stack([positive, negative]).to(self.separation)
        # Under DDP every rank must take the same stop decision, or the others wait forever.
        current = self.trainer.strategy.reduce(current, reduce_op="mean")
        if torch.isnan(self.separation).any():
            self.separation.copy_(current)
        else:
            self.separation.mul_(hp.ema).add_((1 - hp.ema) * current)
        self.separation_history.append(self.separation.detach().cpu().clone())
        if (
            hp.converge_patience > 0
            and self.global_step >= hp.min_steps
            and len(self.separation_history) == self.separation_history.maxlen
            and separations_converged(
                torch.stack(list(self.separation_history)),
                hp.converge_positive,
                hp.converge_negative,
                hp.converge_tolerance,
            )
        ):
            rank_zero_info(
                f"patch-contrastive FCNN converged at step {self.global_step}: separation "
                f"within positives {self.separation[0]:.4f}, between pairs {self.separation[1]:.4f}"
            )
            self.converged_at_step = self.global_step
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The convergence window is training state: a resumed run must stop where an
        # uninterrupted one would, not refill the window first.
        history = list(self.separation_history)
        checkpoint["separation_history"] = (
            torch.stack(history) if history else torch.empty(0, 2, dtype=self.separation.dtype)
        )
        checkpoint["converged_at_step"] = self.converged_at_step

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.separation_history.clear()
        self.separation_history.extend(checkpoint.get("separation_history", torch.empty(0, 2)))
        self.converged_at_step = checkpoint.get("converged_at_step")

    def predict_masks(self, batch: Batch) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Instance maps (H, W) int32 and binary masks (H, W) bool for a batch of whole images."""
        hp = self.hparams
        probs = self(batch["image"]).cpu().numpy()
        instances, binaries = [], []
        for prob, rgb in zip(probs, batch_rgb(batch, hp.normalization), strict=True):
            hematoxylin = hematoxylin_density(rgb)
            if hp.nuclei_class is None:
                nuclei = nuclei_from_score(nuclear_score(prob, hematoxylin))
            else:
                nuclei = prob.argmax(axis=0) == hp.nuclei_class
            binary = clean_binary(nuclei, hp.min_area)
            if hp.refine_pad is not None:
                smooth = ndi.gaussian_filter(hematoxylin, 1.0)
                refined = refine_outlines_locally(smooth, binary, hp.refine_pad)
                binary = clean_binary(refined, hp.min_area)
            binaries.append(binary)
            instances.append(binary_to_instances(binary, hp.min_distance))
        return instances, binaries

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        instances, _ = self.predict_masks(batch)
        update_metrics(self.val_metrics, instances, batch)
        if batch_idx < self.hparams.num_log_images:
            log_overlay(self, batch, instances[0], batch_idx, self.hparams.normalization)

    def on_validation_epoch_end(self) -> None:
        log_gathered(self, self.val_metrics.compute())
        self.val_metrics.reset()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        update_metrics(self.test_metrics, self.predict_masks(batch)[0], batch)

    def on_test_epoch_end(self) -> None:
        log_gathered(self, self.test_metrics.compute())
        self.test_metrics.reset()

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        instances, binaries = self.predict_masks(batch)
        return prediction_items(batch, instances, binary=binaries)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            return torch.optim.Adam(self.parameters(), lr=3e-3)
        return self.optimizer_factory(self.parameters())
