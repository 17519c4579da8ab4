"""Learning-rate schedules that anneal by the time guard as well as by the step count."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Timer
from torch.utils.data import DataLoader, TensorDataset

from protoseg.distributed import DestroyProcessGroupAtExit
from protoseg.lightning_modules.time_budget import (
    spent_time_fraction,
    warmup_cosine_within_budget,
)
from protoseg.modules.momentum import warmup_cosine


class FrozenTimer(Timer):
    """A :class:`Timer` whose clock reads a fixed number of seconds."""

    def __init__(self, duration_s: float, elapsed_s: float) -> None:
        super().__init__(duration=timedelta(seconds=duration_s))
        self.elapsed_s = elapsed_s

    def time_elapsed(self, stage: object = None) -> float:
        return self.elapsed_s


class RankSkewedTimer(FrozenTimer):
    """Each rank's clock reads differently: rank 0 has spent 10% of the budget, others 80%."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.elapsed_s = 6.0 if trainer.global_rank == 0 else 48.0


class LearningRateProbe(L.LightningModule):
    """A linear model under ``warmup_cosine_within_budget`` that records the rate it trains at
    (to ``<out_dir>/rank<r>.json`` when fitting ends)."""

    def __init__(self, out_dir: str | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.out_dir = out_dir
        self.learning_rates: list[float] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.learning_rates.append(self.optimizers().param_groups[0]["lr"])
        return self.layer(batch[0]).pow(2).mean()

    def on_train_end(self) -> None:
        if self.out_dir is not None:
            path = Path(self.out_dir) / f"rank{self.global_rank}.json"
            path.write_text(json.dumps(self.learning_rates))

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
        schedule = warmup_cosine_within_budget(self.trainer, 0, self.trainer.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def reference(step: int, warmup: int, max_steps: int, time_share: float) -> float:
    """The schedule written out: linear warm-up, then a cosine at the step count or at the
    step the time share stands for, whichever is further."""
    if step < warmup:
        return (step + 1) / warmup
    at = max(step, time_share * max_steps)
    share = (at - warmup) / (max_steps - warmup)
    return (1 + math.cos(math.pi * min(share, 1.0))) / 2


def test_without_a_time_guard_the_schedule_is_the_step_cosine() -> None:
    for trainer in (
        SimpleNamespace(callbacks=[], world_size=1),
        SimpleNamespace(callbacks=[Timer()], world_size=1),
    ):
        assert spent_time_fraction(trainer) == 0.0
        multiplier = warmup_cosine_within_budget(trainer, warmup=10, max_steps=100)
        for step in range(0, 120, 7):
            assert multiplier(step) == pytest.approx(warmup_cosine(step, 10, 100))


@pytest.mark.parametrize("elapsed_s", [0.0, 15.0, 30.0, 54.0, 60.0, 90.0])
def test_the_cosine_follows_whichever_share_is_further(elapsed_s: float) -> None:
    trainer = SimpleNamespace(
        callbacks=[FrozenTimer(duration_s=60.0, elapsed_s=elapsed_s)], world_size=1
    )
    share = min(elapsed_s / 60.0, 1.0)
    assert spent_time_fraction(trainer) == pytest.approx(share)
    multiplier = warmup_cosine_within_budget(trainer, warmup=10, max_steps=1000)
    for step in (0, 5, 9, 10, 100, 400, 600, 900, 1000, 1200):
        assert multiplier(step) == pytest.approx(reference(step, 10, 1000, share))


def quiet_trainer(**kwargs: object) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_a_guard_stopped_fit_ends_near_zero_learning_rate() -> None:
    """A real fit stopped by ``max_time`` far before ``max_steps`` anneals anyway."""
    probe = LearningRateProbe()
    trainer = quiet_trainer(max_steps=10**9, max_time=timedelta(seconds=1.5))
    trainer.fit(probe, DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=8))
    assert trainer.global_step < 10**6
    assert probe.learning_rates[0] == pytest.approx(1.0, abs=0.05)
    # By steps the cosine has not moved (1e-9 of its course); by time it is at its end.
    assert probe.learning_rates[-1] < 0.05


def test_ddp_ranks_share_rank_zeros_time_share(tmp_path: Path) -> None:
    """Two gloo ranks whose clocks disagree train at one rate: rank 0's."""
    trainer = quiet_trainer(
        devices=2,
        strategy="ddp_spawn",
        max_steps=4,
        callbacks=[RankSkewedTimer(duration_s=60.0, elapsed_s=0.0), DestroyProcessGroupAtExit()],
    )
    data = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=8)
    trainer.fit(LearningRateProbe(str(tmp_path)), data)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    expected = [reference(step, 0, 4, 0.1) for step in range(4)]
    assert ranks[0] == pytest.approx(expected)
    assert ranks[1] == pytest.approx(expected)
