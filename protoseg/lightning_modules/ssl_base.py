"""What every self-supervised stage shares: views on the device, LR scaling, encoder export."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from protoseg.lightning_modules.batch_rng import batch_rng, training_batch_index
from protoseg.lightning_modules.ddp_layout import channels_last_under_ddp
from protoseg.lightning_modules.time_budget import warmup_cosine_within_budget
from protoseg.modules.backbones import save_encoder_checkpoint

Batch = dict[str, Any]

# Views are made in the module's on_after_batch_transfer on purpose (on the device, outside
# autocast); Lightning warns about every module that overrides it next to a datamodule.
warnings.filterwarnings(
    "ignore", message=".*overridden `on_after_batch_transfer` in `LightningModule` but have"
)


class SSLModule(L.LightningModule):
    """Base of the SimCLR, MoCo, BYOL and DINO modules (each adds its heads and loss).

    - **Views**: batches hold ``image`` (B, 3, H, W) RGB in [0, 1]; ``augment`` turns them
      into normalised ``batch["views"]`` in ``on_after_batch_transfer``, so on the GPU.
    - **Learning rate**: the optimizer's lr is per ``base_lr_batch_size`` images (Goyal et
      al., 2017): it is multiplied by ``batch * world_size * accumulate_grad_batches /
      base_lr_batch_size``, then follows a linear warm-up and a cosine decay to zero over
      ``trainer.estimated_stepping_batches`` (or to ``trainer.max_time`` where that ends the
      run first, :mod:`~protoseg.lightning_modules.time_budget`). Default optimizer: AdamW(lr=1e-3,
      weight_decay=1e-4) for every method (the papers use LARS/SGD at large batch sizes;
      AdamW is the robust choice for small batches).
    - **BatchNorm under DDP**: statistics are per process unless the Trainer converts them;
      pass ``--trainer.sync_batchnorm=true`` (the ``configs/trainer/ddp.yaml`` preset does).
    - **Export**: :meth:`export_encoder` writes the backbone as an ``encoder_ckpt`` that
      :class:`~protoseg.modules.backbones.TimmBackbone` and the U-Net load by path.

    Args:
        backbone: encoder mapping (B, 3, h, w) to (B, F), with ``num_features`` = F.
        augment: view augmentation (B, 3, H, W) -> (B, 3, h, w), or a list of views.
        optimizer: optimizer factory taking the trainable parameters.
        warmup_steps: linear learning-rate warm-up, in optimizer steps.
        base_lr_batch_size: the batch size the optimizer's lr is given for.
    """

    def __init__(
        self,
        backbone: nn.Module,
        augment: nn.Module,
        optimizer: OptimizerCallable | None = None,
        warmup_steps: int = 100,
        base_lr_batch_size: int = 256,
    ) -> None:
        super().__init__()
        if base_lr_batch_size < 1:
            raise ValueError(f"base_lr_batch_size must be >= 1, got {base_lr_batch_size}")
        self.backbone = backbone
        self.augment = augment
        self.optimizer_factory = optimizer
        self.warmup_steps = warmup_steps
        self.base_lr_batch_size = base_lr_batch_size
        self.total_steps = 1

    def setup(self, stage: str) -> None:
        """Lays the weights out channels-last for a DDP fit, like the views
        (:mod:`~protoseg.lightning_modules.ddp_layout`)."""
        channels_last_under_ddp(self, stage)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, F) of normalised images (B, 3, H, W)."""
        return self.backbone(images)

    def make_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Two augmented views (B, 3, h, w) of each image, drawn in one batched call."""
        return list(self.augment(images.repeat(2, 1, 1, 1)).chunk(2))

    def _draw_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        # During fit the views come from a generator seeded per batch: a resumed run draws
        # what an uninterrupted one would (protoseg.lightning_modules.batch_rng).
        trainer = self._trainer
        if trainer is None or not trainer.training:
            return self.make_views(images)
        with batch_rng(self, training_batch_index(trainer, transferring=True)):
            return self.make_views(images)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        if isinstance(batch, dict) and "image" in batch and "views" not in batch:
            # Channels-last views: oneDNN (CPU) and cuDNN under autocast run NHWC convolutions
            # faster than NCHW ones.
            views = self._draw_views(batch["image"])
            batch["views"] = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return batch

    def log_step(self, loss: torch.Tensor, z: torch.Tensor, **scalars: float) -> None:
        """Logs ``train/loss``, ``train/embedding_std`` and method-specific scalars.

        The per-dimension std of the l2-normalised embeddings ``z`` (N, D) is ~1/sqrt(D) when
        they spread over the sphere and falls to 0 when they collapse to one point.
        """
        size = z.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        spread = F.normalize(z.detach().float(), dim=1).std(dim=0).mean()
        self.log("train/embedding_std", spread, batch_size=size)
        for name, value in scalars.items():
            self.log(f"train/{name}", float(value), batch_size=size)

    @property
    def export_backbone(self) -> nn.Module:
        """The encoder :meth:`export_encoder` writes."""
        return self.backbone

    def export_encoder(self, path: str | Path) -> Path:
        """Writes ``{"backbone": name, "state_dict": ...}`` to ``path`` atomically."""
        return save_encoder_checkpoint(self.export_backbone, path)

    def _lr_factor(self) -> float:
        trainer = self.trainer
        # With max_steps set, Lightning has not loaded the train dataloader yet: ask the
        # datamodule, whose batch size is the per-process one.
        batch_size = getattr(trainer.train_dataloader, "batch_size", None)
        if batch_size is None and trainer.datamodule is not None:
            batch_size = getattr(trainer.datamodule, "hparams", {}).get("batch_size")
        if batch_size is None:
            rank_zero_warn("training batch size unknown: the learning rate is not scaled")
            return 1.0
        global_batch = batch_size * trainer.world_size * trainer.accumulate_grad_batches
        return global_batch / self.base_lr_batch_size

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_factory is None:
            optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
        else:
            optimizer = self.optimizer_factory(params)
        # Also loads the train dataloader, whose batch size the scaling needs.
        total = float(self.trainer.estimated_stepping_batches)
        if not math.isfinite(total):
            raise ValueError("set trainer.max_steps or max_epochs: the schedules need an end")
        self.total_steps = max(int(total), 1)
        factor = self._lr_factor()
        for group in optimizer.param_groups:
            group["lr"] *= factor
        warmup = min(self.warmup_steps, self.total_steps // 2)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine_within_budget(self.trainer, warmup, self.total_steps)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
