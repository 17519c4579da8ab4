"""Stop cleanly on SIGTERM, SIGUSR1 or Ctrl-C and save ``last.ckpt``, so that a rerun resumes there.

What Lightning 2.6 does by itself, and what this callback adds:

- **SIGTERM** (``kill``, ``scancel``, SLURM preemption): Lightning's signal connector marks
  the trainer and, at the end of the current step, raises ``SIGTERMException`` on every rank
  (rank 0's flag is broadcast), but saves nothing: the work since the last periodic
  checkpoint is lost. This callback's ``on_exception`` saves it.
- **SIGUSR1**: under SLURM with auto-requeue, Lightning saves ``hpc_ckpt_<n>.ckpt`` and
  requeues the job; anywhere else it installs no handler and the default action kills the
  process on the spot. This callback chains a handler after Lightning's: training stops at
  the end of the current step (any rank's signal stops all ranks) and saves, as for SIGTERM.
- **SIGINT** (Ctrl-C): Lightning catches the ``KeyboardInterrupt`` wherever it lands (in the
  middle of a step, the optimizer's included), saves nothing and exits with status 1. During
  training this callback takes SIGINT as it takes SIGUSR1: the step finishes, ``last.ckpt``
  is saved and the process exits with 130. A second Ctrl-C stops at once, unsaved.

The checkpoint goes where the run's first ``ModelCheckpoint(save_last=True)`` keeps its last
checkpoint (``last.ckpt``, the same file that callback overwrites), so that
``protoseg fit ... --ckpt_path last`` — the same command — resumes from it, and the
checkpoint folder holds no extra file. The save happens at a step boundary (after the
optimizer step and ``on_train_batch_end``), the state Lightning's own mid-epoch checkpoints
have, so the resumed run ends at the same global step as an uninterrupted one.
The process then exits with status 128 + signal number (:func:`protoseg.cli.main`), so that a
shell chain ``fit && predict`` does not go on with an unfinished model.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException


class PreemptionCheckpoint(Callback):
    """Saves ``last.ckpt`` when a fit is stopped by SIGTERM, SIGUSR1 or SIGINT (module doc).

    ``protoseg`` adds one to every run (``protoseg.cli.build_cli``); nothing to configure.
    Under DDP each step ends with one all-reduce of a boolean (whether any rank received
    SIGUSR1 or SIGINT), so that every rank stops after the same step.
    """

    def __init__(self) -> None:
        self._requested: int | None = None
        self.saved_path: str | None = None

    def _on_sigusr1(self, previous: Any) -> Any:
        def handler(signum: int, frame: FrameType | None) -> None:
            if callable(previous):
                previous(signum, frame)  # Lightning's SLURM save-and-requeue, when installed
            self._requested = signum

        return handler

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self._requested = signum
        # The next Ctrl-C raises KeyboardInterrupt as usual: a way out of a long step.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print(
            "\nprotoseg: Ctrl-C: stopping after this step and saving last.ckpt "
            "(Ctrl-C again to stop at once, unsaved)",
            file=sys.stderr,
            flush=True,
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._last_checkpoint_callback(trainer) is None:
            rank_zero_warn(
                "PreemptionCheckpoint: no ModelCheckpoint(save_last=True), so a run stopped by "
                "SIGTERM/SIGUSR1 saves nothing and cannot resume with --ckpt_path last"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registers its handlers just before training starts and restores the
        # previous ones (of every signal) at teardown, which also removes these.
        self._requested = None
        self.saved_path = None
        if threading.current_thread() is not threading.main_thread():
            return
        if hasattr(signal, "SIGUSR1"):
            previous = signal.getsignal(signal.SIGUSR1)
            signal.signal(signal.SIGUSR1, self._on_sigusr1(previous))
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._on_sigint)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        stop = trainer.strategy.reduce_boolean_decision(self._requested is not None, all=False)
        if stop:
            signum = self._requested or signal.SIGUSR1
            rank_zero_info(f"protoseg: signal {int(signum)} received, stopping after this step")
            raise SIGTERMException(128 + int(signum))

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        callback = self._last_checkpoint_callback(trainer)
        if callback is None:
            return
        path = self._last_path(trainer, callback)
        # Set before saving: the path is part of the checkpoint's callback state, so that the
        # resumed run overwrites this file rather than writing last-v1.ckpt beside it.
        callback.last_model_path = path
        trainer.save_checkpoint(path)
        self.saved_path = path
        rank_zero_info(
            f"protoseg: stopped at step {trainer.global_step}, saved {path}; "
            "rerun the same command with --ckpt_path last to resume"
        )

    @staticmethod
    def _last_checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last:
                return callback
        return None

    @staticmethod
    def _last_path(trainer: L.Trainer, callback: ModelCheckpoint) -> str:
        """``callback``'s current last checkpoint, else the name it would give a new one."""
        if callback.last_model_path:
            return callback.last_model_path
        metrics = {
            "epoch": torch.tensor(trainer.current_epoch),
            "step": torch.tensor(trainer.global_step),
        }
        path = callback.format_checkpoint_name(metrics, callback.CHECKPOINT_NAME_LAST)
        version = callback.STARTING_VERSION
        # Like ModelCheckpoint: never overwrite the last checkpoint of another run.
        while callback.file_exists(path, trainer):
            path = callback.format_checkpoint_name(
                metrics, callback.CHECKPOINT_NAME_LAST, ver=version
            )
            version += 1
        return path
