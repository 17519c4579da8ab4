"""BYOL: predict a momentum target's projection of the other view (Grill et al., 2020)."""

from __future__ import annotations

import copy

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from protoseg.lightning_modules.hparams import save_init_hyperparameters
from protoseg.lightning_modules.ssl_base import Batch, SSLModule
from protoseg.modules.heads import byol_prediction_head, byol_projection_head
from protoseg.modules.momentum import cosine_schedule, update_momentum
from protoseg.modules.ssl_augment import PathologyViewAugment
from protoseg.modules.ssl_losses import byol_loss


class BYOLModule(SSLModule):
    """BYOL pretraining of ``backbone`` on unlabelled tiles; no negatives.

    The target network (backbone + projector) is an EMA of the online one, whose momentum
    follows a cosine from ``momentum_start`` to ``momentum_end`` over the run; it is updated
    at the start of each step (under gradient accumulation, once per micro-batch). The loss
    is symmetrised as in the paper: ``byol_loss(p1, z2) + byol_loss(p2, z1)``.

    Args:
        backbone: encoder (B, 3, h, w) -> (B, F) with ``num_features``.
        augment: view augmentation; default :class:`PathologyViewAugment` at 224 px.
        optimizer: optimizer factory; default AdamW(lr=1e-3 per 256 images, wd=1e-4).
        projection_hidden_dim: hidden width of the projector.
        projection_dim: output width of the projector and the predictor.
        prediction_hidden_dim: hidden width of the predictor.
        momentum_start: target EMA momentum at step 0.
        momentum_end: target EMA momentum at the last step.
        warmup_steps: linear learning-rate warm-up.
        base_lr_batch_size: the batch size the optimizer's lr is given for.
    """

    def __init__(
        self,
        backbone: nn.Module,
        augment: nn.Module | None = None,
        optimizer: OptimizerCallable | None = None,
        projection_hidden_dim: int = 4096,
        projection_dim: int = 256,
        prediction_hidden_dim: int = 4096,
        momentum_start: float = 0.99,
        momentum_end: float = 1.0,
        warmup_steps: int = 100,
        base_lr_batch_size: int = 256,
    ) -> None:
        augment = augment if augment is not None else PathologyViewAugment()
        super().__init__(backbone, augment, optimizer, warmup_steps, base_lr_batch_size)
        save_init_hyperparameters(self)
        self.projection_head = byol_projection_head(
            backbone.num_features, projection_hidden_dim, projection_dim
        )
        self.prediction_head = byol_prediction_head(
            projection_dim, prediction_hidden_dim, projection_dim
        )
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.target_head = copy.deepcopy(self.projection_head).requires_grad_(False)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        views = torch.cat(batch["views"])
        momentum = cosine_schedule(
            self.global_step, self.total_steps, hp.momentum_start, hp.momentum_end
        )
        update_momentum(self.backbone, self.target_backbone, momentum)
        update_momentum(self.projection_head, self.target_head, momentum)
        z_online = self.projection_head(self.backbone(views))
        p1, p2 = self.prediction_head(z_online).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_head(self.target_backbone(views)).chunk(2)
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        self.log_step(loss, z_online, momentum=momentum)
        return loss
