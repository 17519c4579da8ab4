"""Training randomness seeded per batch: resumed fits draw what uninterrupted ones do."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from conftest import short_fit_args
from lightning.pytorch.utilities.exceptions import SIGTERMException

from protoseg.cli import build_cli
from protoseg.lightning_modules.batch_rng import batch_rng, batch_seed

ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS = 6  # 4 steps per epoch


def test_batch_seed_is_a_function_of_run_batch_and_rank() -> None:
    seeds = {batch_seed(s, b, r) for s in (0, 1) for b in (0, 1, 2) for r in (0, 1)}
    assert len(seeds) == 12
    assert batch_seed(3, 7, 1) == batch_seed(3, 7, 1)
    assert all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(ValueError, match=">= 0"):
        batch_seed(0, -1, 0)


def test_batch_rng_repeats_draws_and_leaves_the_global_stream_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    module = L.LightningModule()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with batch_rng(module, 9):
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)
    with batch_rng(module, 9):
        again = torch.rand(4)
    with batch_rng(module, 10):
        other = torch.rand(4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_processes_of_one_run_draw_differently(monkeypatch: pytest.MonkeyPatch) -> None:
    """DDP ranks, seeded alike by seed_everything, still draw their own views."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    draws = []
    for rank in (0, 1):
        module = L.LightningModule()
        module._trainer = SimpleNamespace(global_rank=rank)  # what a DDP process's trainer has
        assert module.global_rank == rank
        with batch_rng(module, 3):
            draws.append(torch.rand(4))
    assert not torch.equal(draws[0], draws[1])


def test_unseeded_runs_draw_from_the_global_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with batch_rng(L.LightningModule(), 4):
        drawn = torch.rand(3)
    assert torch.equal(drawn, expected)


def fit_args(config: str, root: Path, run_dir: Path) -> list[str]:
    return [
        f"--config={ROOT / 'configs' / config}",
        f"--config={ROOT / 'configs/trainer/cpu.yaml'}",
        f"--data.root={root}",
        "--data.crop_size=64",
        "--data.crops_per_epoch=8",
        "--data.batch_size=2",
        "--data.num_workers=0",
        "--data.val_fraction=0.0",
        *short_fit_args(run_dir, MAX_STEPS),
    ]


class StopAt(L.Callback):
    """Sends this process SIGTERM after global step ``at_step``."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGTERM)


# Stops mid-epoch 0 and mid-epoch 1 (not at step 4, the last of epoch 0: see the exception in
# protoseg's resume_sampler).
@pytest.mark.parametrize("at_step", [2, 5], ids=["epoch0-mid", "epoch1-mid"])
@pytest.mark.parametrize(
    "config", ["patch_contrast/monuseg.yaml", "psm/monuseg.yaml", "monuseg/segment.yaml"]
)
def test_resumed_fit_ends_with_the_weights_of_an_uninterrupted_one(
    config: str, at_step: int, tiny_monuseg_root: Path, tmp_path: Path
) -> None:
    whole = build_cli(fit_args(config, tiny_monuseg_root, tmp_path / "whole"), run=False)
    whole.trainer.fit(whole.model, datamodule=whole.datamodule)

    run_dir = tmp_path / "stopped"
    first = build_cli(fit_args(config, tiny_monuseg_root, run_dir), run=False)
    first.trainer.callbacks.insert(0, StopAt(at_step))
    with pytest.raises(SIGTERMException):
        first.trainer.fit(first.model, datamodule=first.datamodule)
    again = build_cli(fit_args(config, tiny_monuseg_root, run_dir), run=False)
    again.trainer.fit(again.model, datamodule=again.datamodule, ckpt_path="last")

    assert again.trainer.global_step == whole.trainer.global_step == MAX_STEPS
    expected, resumed = whole.model.state_dict(), again.model.state_dict()
    assert expected.keys() == resumed.keys()
    for name, value in expected.items():
        assert torch.equal(value, resumed[name]), name
