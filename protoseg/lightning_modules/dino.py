"""DINO: self-distillation with a momentum teacher, centering and multi-crop (Caron et al., 2021).

Kept from the paper: teacher EMA with a cosine momentum schedule (0.996 -> 1), teacher
temperature warm-up (0.04 -> 0.07, linear), centering with momentum 0.9, the student sees
all crops and the teacher the 2 global ones, the last layer's gradients may be cancelled
during the first steps. Left out: the weight-decay schedule (0.04 -> 0.4) and per-layer
decay exclusions; clip gradients with ``--trainer.gradient_clip_val=3.0`` as the paper does.
"""

from __future__ import annotations

import copy

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from protoseg.lightning_modules.hparams import save_init_hyperparameters
from protoseg.lightning_modules.ssl_base import Batch, SSLModule
from protoseg.modules.heads import DINOHead
from protoseg.modules.momentum import cosine_schedule, update_momentum
from protoseg.modules.ssl_augment import MultiCropAugment
from protoseg.modules.ssl_losses import DINOCenter, dino_loss


class DINOModule(SSLModule):
    """DINO pretraining of ``backbone`` on unlabelled tiles.

    ``augment`` must return a list of views, the 2 global crops first (e.g.
    :class:`MultiCropAugment`); the backbone must accept every crop size (CNNs do; timm ViTs
    need ``dynamic_img_size``). The exported encoder is the teacher's, which the paper finds
    the better of the two.

    Args:
        backbone: encoder (B, 3, h, w) -> (B, F) with ``num_features``.
        augment: multi-crop augmentation; default :class:`MultiCropAugment` (224 / 96 px).
        optimizer: optimizer factory; default AdamW(lr=1e-3 per 256 images, wd=1e-4).
        out_dim: prototypes K of the head.
        hidden_dim: hidden width of the head's MLP.
        bottleneck_dim: width before the head's normalised last layer.
        norm_last_layer: fix the last layer's weight norm (see :class:`DINOHead`).
        student_temp: student temperature.
        warmup_teacher_temp: teacher temperature at step 0.
        teacher_temp: teacher temperature after ``teacher_temp_warmup_steps``.
        teacher_temp_warmup_steps: steps of the linear teacher-temperature warm-up.
        center_momentum: EMA momentum of the center.
        momentum_start: teacher EMA momentum at step 0.
        momentum_end: teacher EMA momentum at the last step.
        freeze_last_layer_steps: steps during which the last layer gets no update.
        warmup_steps: linear learning-rate warm-up.
        base_lr_batch_size: the batch size the optimizer's lr is given for.
    """

    def __init__(
        self,
        backbone: nn.Module,
        augment: nn.Module | None = None,
        optimizer: OptimizerCallable | None = None,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
        student_temp: float = 0.1,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        teacher_temp_warmup_steps: int = 300,
        center_momentum: float = 0.9,
        momentum_start: float = 0.996,
        momentum_end: float = 1.0,
        freeze_last_layer_steps: int = 0,
        warmup_steps: int = 100,
        base_lr_batch_size: int = 256,
    ) -> None:
        augment = augment if augment is not None else MultiCropAugment()
        super().__init__(backbone, augment, optimizer, warmup_steps, base_lr_batch_size)
        save_init_hyperparameters(self)
        self.head = DINOHead(
            backbone.num_features, out_dim, hidden_dim, bottleneck_dim, 3, norm_last_layer
        )
        self.teacher_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.center = DINOCenter(out_dim, center_momentum)

    @property
    def export_backbone(self) -> nn.Module:
        return self.teacher_backbone

    def make_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.augment(images))

    def current_teacher_temp(self) -> float:
        """Teacher temperature at the current step (linear warm-up, then constant)."""
        hp = self.hparams
        progress = min(self.global_step / max(hp.teacher_temp_warmup_steps, 1), 1.0)
        return hp.warmup_teacher_temp + (hp.teacher_temp - hp.warmup_teacher_temp) * progress

    def _student(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        # One forward per crop size: the global crops together, then the local ones.
        outputs: list[torch.Tensor] = []
        start = 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].shape == views[start].shape:
                end += 1
            logits = self.head(self.backbone(torch.cat(views[start:end])))
            outputs += list(logits.chunk(end - start))
            start = end
        return outputs

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        views = batch["views"]
        momentum = cosine_schedule(
            self.global_step, self.total_steps, hp.momentum_start, hp.momentum_end
        )
        update_momentum(self.backbone, self.teacher_backbone, momentum)
        update_momentum(self.head, self.teacher_head, momentum)
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_backbone(torch.cat(views[:2])))
        student = self._student(views)
        teacher_temp = self.current_teacher_temp()
        loss = dino_loss(
            student, list(teacher.chunk(2)), self.center.center, hp.student_temp, teacher_temp
        )
        self.center.update(teacher)
        self.log_step(loss, teacher, momentum=momentum, teacher_temp=teacher_temp)
        return loss

    def on_after_backward(self) -> None:
        if self.global_step < self.hparams.freeze_last_layer_steps:
            for param in self.head.last_layer.parameters():
                param.grad = None
