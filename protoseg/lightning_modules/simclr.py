"""SimCLR: contrast two views of each image against the rest of the batch (Chen et al., 2020)."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from protoseg.lightning_modules.hparams import save_init_hyperparameters
from protoseg.lightning_modules.ssl_base import Batch, SSLModule
from protoseg.modules.heads import simclr_projection_head
from protoseg.modules.ssl_augment import PathologyViewAugment
from protoseg.modules.ssl_losses import nt_xent_loss


class SimCLRModule(SSLModule):
    """SimCLR pretraining of ``backbone`` on unlabelled tiles.

    Both views go through the backbone and the projection head in one batch of 2B; NT-Xent
    takes every other embedding as a negative, gathered from all ranks under DDP (so the
    negatives grow with the global batch). See :class:`SSLModule` for views, the learning
    rate and export.

    Args:
        backbone: encoder (B, 3, h, w) -> (B, F) with ``num_features``; e.g.
            :class:`~protoseg.modules.backbones.TimmBackbone`.
        augment: view augmentation; default :class:`PathologyViewAugment` at 224 px.
        optimizer: optimizer factory; default AdamW(lr=1e-3 per 256 images, wd=1e-4).
        projection_hidden_dim: hidden width of the projection head.
        projection_dim: output width of the projection head.
        temperature: NT-Xent temperature.
        gather_negatives: under DDP, use the negatives of every rank.
        warmup_steps: linear learning-rate warm-up.
        base_lr_batch_size: the batch size the optimizer's lr is given for.
    """

    def __init__(
        self,
        backbone: nn.Module,
        augment: nn.Module | None = None,
        optimizer: OptimizerCallable | None = None,
        projection_hidden_dim: int = 2048,
        projection_dim: int = 128,
        temperature: float = 0.1,
        gather_negatives: bool = True,
        warmup_steps: int = 100,
        base_lr_batch_size: int = 256,
    ) -> None:
        augment = augment if augment is not None else PathologyViewAugment()
        super().__init__(backbone, augment, optimizer, warmup_steps, base_lr_batch_size)
        save_init_hyperparameters(self)
        self.projection_head = simclr_projection_head(
            backbone.num_features, projection_hidden_dim, projection_dim
        )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        view1, view2 = batch["views"]
        z = self.projection_head(self.backbone(torch.cat([view1, view2])))
        z1, z2 = z.chunk(2)
        loss = nt_xent_loss(z1, z2, self.hparams.temperature, gather=self.hparams.gather_negatives)
        self.log_step(loss, z1)
        return loss
