"""benchmarks/chain_profile.py: the step clock marks each step's phases in order, on a tiny fit."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.chain_profile import PHASES, StepClock


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.layer(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_phases_of_each_step_add_up(tmp_path: Path) -> None:
    clock = StepClock()
    trainer = L.Trainer(
        max_steps=6,
        callbacks=[clock],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    data = DataLoader(TensorDataset(torch.randn(12, 4)), batch_size=2)
    trainer.fit(Tiny(), data)
    assert len(clock.marks) == 6
    summary = clock.summary(warmup=2)
    assert summary["steps_timed"] == 4
    for name in ("cpu", "wall"):
        phases = summary[name]
        assert set(phases) == {*PHASES, "step"}
        assert all(value >= 0 for value in phases.values())
    for marks in clock.marks:
        times = [marks[p][1] for p in ("begin", *PHASES)]
        assert times == sorted(times)
