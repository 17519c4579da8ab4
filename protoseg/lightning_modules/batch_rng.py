"""Training randomness drawn per batch: a resumed fit draws what an uninterrupted one would.

Label-free and SSL stages draw their views on the device (crops, flips, colour jitter) from
torch's global generator. Lightning restores weights, optimizer and loop state on resume, not
the generators, so a run resumed from ``last.ckpt`` would replay the views of the first steps
instead of continuing, and under DDP every rank (seeded alike by ``seed_everything``) would
draw the same view parameters for its different images. :func:`batch_rng` instead seeds the
draws of each training batch from the run's seed, the batch's index across epochs (restored
with the loop state) and the process rank, inside ``torch.random.fork_rng``, so the global
generators are left as they were.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import numpy as np
import torch


def batch_seed(run_seed: int, batch_index: int, rank: int) -> int:
    """A 63-bit seed for one training batch of one process, mixed by ``np.random.SeedSequence``."""
    if min(run_seed, batch_index, rank) < 0:
        raise ValueError(f"seed parts must be >= 0, got {(run_seed, batch_index, rank)}")
    state = np.random.SeedSequence([run_seed, batch_index, rank]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def run_seed() -> int | None:
    """The seed of ``lightning.seed_everything`` (``PL_GLOBAL_SEED``); None when unseeded."""
    value = os.environ.get("PL_GLOBAL_SEED")
    return None if value is None else int(value)


@contextmanager
def batch_rng(module: L.LightningModule, batch_index: int) -> Iterator[None]:
    """Seeds torch's generators for the draws of training batch ``batch_index``.

    Without a run seed (``seed_everything`` not called) the draws stay on the global stream.
    """
    seed = run_seed()
    if seed is None:
        yield
        return
    device = module.device
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(batch_seed(seed, batch_index, module.global_rank))
        yield


def training_batch_index(trainer: L.Trainer, transferring: bool = False) -> int:
    """Index across epochs of the current training batch, restored on resume with the loop.

    ``transferring``: called from ``on_after_batch_transfer``, before Lightning counts the
    batch as ready (from ``training_step`` on, it is counted).
    """
    ready = trainer.fit_loop.epoch_loop.batch_progress.total.ready
    # A training_step called by hand, outside a fit, counts as batch 0.
    return ready if transferring else max(ready - 1, 0)
