"""Leaving torch.distributed cleanly at the end of a DDP process.

A process that exits with its gloo process group still alive can abort while the interpreter
shuts down ("terminate called without an active exception", SIGABRT): gloo's worker threads
outlive the objects they use. PyTorch asks every process to call ``destroy_process_group``
when it no longer communicates; Lightning's trainer does not. One of this project's 2-rank
CPU tests (``ddp_spawn``) had a rank abort that way after its fit had finished.
"""

from __future__ import annotations

import atexit

import lightning as L
import torch.distributed as dist


def destroy_process_group() -> None:
    """Destroys the default process group if this process has one (else does nothing)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class DestroyProcessGroupAtExit(L.Callback):
    """For ``ddp_spawn`` (the ranks are workers that return to Lightning, not this CLI): each
    rank registers :func:`destroy_process_group` to run at its exit, while the interpreter is
    still whole."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        atexit.unregister(destroy_process_group)  # once, however many fits this rank runs
        atexit.register(destroy_process_group)
