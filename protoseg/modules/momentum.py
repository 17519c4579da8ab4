"""Momentum (EMA) encoders and the schedules of self-supervised training."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def update_momentum(online: nn.Module, target: nn.Module, m: float) -> None:
    """EMA step in place: ``target = m * target + (1 - m) * online`` for every parameter.

    Buffers (BatchNorm running statistics, counters) are copied from ``online``: they are
    statistics of the data, not weights to be averaged. Both modules must have the same
    architecture (the target is usually a ``copy.deepcopy`` of the online network).
    """
    for online_param, target_param in zip(online.parameters(), target.parameters(), strict=True):
        target_param.mul_(m).add_(online_param.detach(), alpha=1 - m)
    for online_buffer, target_buffer in zip(online.buffers(), target.buffers(), strict=True):
        target_buffer.copy_(online_buffer)


def cosine_schedule(step: float, max_steps: int, start: float, end: float) -> float:
    """Cosine from ``start`` at step 0 to ``end`` at ``max_steps``, constant afterwards.

    BYOL's target momentum is ``cosine_schedule(k, K, 0.99, 1.0)``:
    ``1 - (1 - 0.99) (cos(pi k / K) + 1) / 2``.
    """
    if max_steps <= 0:
        return end
    progress = min(max(step / max_steps, 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


def warmup_cosine(step: float, warmup: int, max_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine to zero.

    Step ``warmup - 1`` reaches 1; ``max_steps`` and later give 0. A fractional ``step`` past
    the warm-up is a point on the cosine between two steps.
    """
    if step < warmup:
        return (step + 1) / warmup
    return cosine_schedule(step - warmup, max_steps - warmup, 1.0, 0.0)
