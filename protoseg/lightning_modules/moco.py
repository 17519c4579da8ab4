"""MoCo v2: queries against a momentum encoder's keys and a queue of past keys.

He et al., CVPR 2020 (MoCo); Chen et al., arXiv:2003.04297, 2020 (v2: MLP head, blur,
cosine schedule). Shuffling BN across GPUs is not implemented: in a single process it does
not apply, and under DDP ``--trainer.sync_batchnorm=true`` is the usual substitute.
"""

from __future__ import annotations

import copy

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from protoseg.lightning_modules.hparams import save_init_hyperparameters
from protoseg.lightning_modules.ssl_base import Batch, SSLModule
from protoseg.modules.heads import moco_v2_projection_head
from protoseg.modules.momentum import update_momentum
from protoseg.modules.ssl_augment import PathologyViewAugment
from protoseg.modules.ssl_losses import MoCoQueue, infonce_queue_loss


class MoCoModule(SSLModule):
    """MoCo v2 pretraining of ``backbone`` on unlabelled tiles.

    The key encoder (backbone + head) is an EMA of the query encoder, updated before each
    step's keys are computed; the keys of all ranks enter the queue after the loss.

    Args:
        backbone: encoder (B, 3, h, w) -> (B, F) with ``num_features``.
        augment: view augmentation; default :class:`PathologyViewAugment` at 224 px.
        optimizer: optimizer factory; default AdamW(lr=1e-3 per 256 images, wd=1e-4).
        projection_hidden_dim: hidden width of the projection head.
        projection_dim: key width D.
        queue_size: keys K in the queue (negatives per query).
        temperature: InfoNCE temperature.
        momentum: EMA momentum of the key encoder.
        symmetric: also contrast view 2's queries with view 1's keys (MoCo v3 style;
            twice the compute, both views' keys are queued).
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
        queue_size: int = 65536,
        temperature: float = 0.2,
        momentum: float = 0.999,
        symmetric: bool = False,
        warmup_steps: int = 100,
        base_lr_batch_size: int = 256,
    ) -> None:
        augment = augment if augment is not None else PathologyViewAugment()
        super().__init__(backbone, augment, optimizer, warmup_steps, base_lr_batch_size)
        save_init_hyperparameters(self)
        self.projection_head = moco_v2_projection_head(
            backbone.num_features, projection_hidden_dim, projection_dim
        )
        self.key_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.key_head = copy.deepcopy(self.projection_head).requires_grad_(False)
        self.queue = MoCoQueue(projection_dim, queue_size)

    @torch.no_grad()
    def _keys(self, views: torch.Tensor) -> torch.Tensor:
        return self.key_head(self.key_backbone(views))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        view1, view2 = batch["views"]
        update_momentum(self.backbone, self.key_backbone, hp.momentum)
        update_momentum(self.projection_head, self.key_head, hp.momentum)
        negatives = self.queue.keys()
        if hp.symmetric:
            q1, q2 = self.projection_head(self.backbone(torch.cat([view1, view2]))).chunk(2)
            k1, k2 = self._keys(torch.cat([view1, view2])).chunk(2)
            loss = (
                infonce_queue_loss(q1, k2, negatives, hp.temperature)
                + infonce_queue_loss(q2, k1, negatives, hp.temperature)
            ) / 2
            keys = torch.cat([k1, k2])
        else:
            q1 = self.projection_head(self.backbone(view1))
            keys = self._keys(view2)
            loss = infonce_queue_loss(q1, keys, negatives, hp.temperature)
        self.queue.enqueue(keys)
        self.log_step(loss, q1, momentum=hp.momentum)
        return loss
