"""Learning-rate schedules that end when the trainer's ``max_time`` guard ends the run.

A step-count cosine assumes the run reaches ``max_steps``. Where ``max_time`` stops it
first (a slow CPU: the PSM chain's head on a float32-only CPU made 590 of its 1000 steps in
its 27-minute guard), the cosine is cut at 54% of its course and the weights are kept at 43%
of the peak rate instead of at a rate annealed towards zero. Here the cosine is at the larger of the
step count and ``max_steps`` times the share of ``max_time`` spent, so a run the guard stops
still anneals to zero; a run ahead of that pace (or without a guard) follows the step
schedule alone. (A run the guard stops depends on the machine's speed either
way: its step count does.) Measured on the PSM head, 12-minute guard, same pseudo masks and
machine: cut step cosine at step 565, AJI 0.454 / object Dice 0.669; a first form of this
schedule (progress the larger of the step and time shares after warm-up; it let timing move
the rates of runs well ahead of pace), 559 steps, 0.461 / 0.681.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer

from protoseg.modules.momentum import warmup_cosine


def spent_time_fraction(trainer: L.Trainer) -> float:
    """Share of ``trainer``'s ``max_time`` that training has used so far, in [0, 1].

    0 without ``max_time``. The time is Lightning's :class:`~lightning.pytorch.callbacks.Timer`
    reading (wall time since training started, validation included, carried over on resume),
    rank 0's under DDP.
    """
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    if timer is None:
        return 0.0
    remaining = timer.time_remaining()
    if remaining is None:
        return 0.0
    elapsed = timer.time_elapsed()
    duration = elapsed + remaining
    fraction = min(max(elapsed / duration, 0.0), 1.0) if duration > 0 else 1.0
    if trainer.world_size > 1:
        # Each rank's clock differs a little: one learning rate for all, or DDP replicas
        # drift apart. Lightning's Timer broadcasts its stop decision the same way.
        fraction = float(trainer.strategy.broadcast(fraction))
    return fraction


def warmup_cosine_within_budget(
    trainer: L.Trainer, warmup: int, max_steps: int
) -> Callable[[int], float]:
    """LR multiplier for ``LambdaLR``: linear warm-up, then a cosine to zero that also ends at
    ``max_time``.

    Args:
        trainer: the fitting trainer (read at every step for its time spent).
        warmup: warm-up steps; step ``warmup - 1`` reaches 1.
        max_steps: the step budget; the cosine reaches 0 there or at ``max_time``, whichever
            comes first.

    Returns:
        ``step -> multiplier``.
    """

    def multiplier(step: int) -> float:
        if step < warmup:
            return warmup_cosine(step, warmup, max_steps)
        # The step a run exactly on pace to end at max_time would have reached. A run ahead
        # of that pace (every test, every run the guard does not stop) follows the steps
        # alone, so its rates do not depend on timing and a resumed fit repeats them.
        by_time = spent_time_fraction(trainer) * max_steps
        return warmup_cosine(max(step, by_time), warmup, max_steps)

    return multiplier


def warmup_cosine_optimization(
    module: L.LightningModule,
    params: Iterable[torch.nn.Parameter],
    optimizer_factory: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None,
    warmup_steps: int,
    default_lr: float,
    default_weight_decay: float = 1e-4,
) -> dict[str, Any]:
    """``configure_optimizers``' answer for a dense stage: the factory's optimizer (default
    AdamW at ``default_lr`` and ``default_weight_decay``) on ``params``, stepped by
    :func:`warmup_cosine_within_budget` over the trainer's estimated steps (the warm-up at
    most half of them)."""
    params = list(params)
    if optimizer_factory is None:
        optimizer = torch.optim.AdamW(params, lr=default_lr, weight_decay=default_weight_decay)
    else:
        optimizer = optimizer_factory(params)
    trainer = module.trainer
    total = max(int(trainer.estimated_stepping_batches), 1)
    warmup = min(warmup_steps, total // 2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine_within_budget(trainer, warmup, total)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
