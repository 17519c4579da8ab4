"""Checks a ``protoseg`` command runs before it writes anything, and what a failed start leaves.

- Output folders (checkpoints, logs, predictions) may not be, lie inside or contain the data
  the command reads (:func:`~protoseg.io.outputs.check_output_folder`); a predictions folder
  must be new, empty or protoseg's (:func:`~protoseg.io.outputs.claim_output_folder`).
- ``last.ckpt`` is always the run's newest weights: ``fit`` into a checkpoint folder that
  already holds checkpoints is refused unless it resumes that run (``--ckpt_path last`` or a
  checkpoint of that folder). Lightning would otherwise write ``last-v1.ckpt`` beside the
  old ``last.ckpt``, which every later step (``predict --ckpt_path .../last.ckpt``) reads.
- ``validate``, ``test`` and ``predict`` need trained weights (``--ckpt_path``) unless
  ``--allow_random_weights true``.
- A checkpoint is read with ``weights_only=True`` and must be one of the config's model class.
- :func:`removed_on_failure`: a run that fails before training anything takes the log
  folder it created with it (an empty ``tensorboard/version_N`` per failed start, otherwise).

``build_cli(..., run=False)`` callers that drive the trainer themselves call
:func:`check_run` before ``trainer.fit``/``predict`` to get the same checks.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from protoseg.io.checkpoints import check_stage_checkpoint, class_path_of, read_checkpoint
from protoseg.io.errors import DataError
from protoseg.io.outputs import (
    check_output_folder,
    claim_output_folder,
    existing_paths,
    is_input_argument,
)

#: ``--ckpt_path`` values Lightning resolves itself (not file names).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def input_paths(datamodule: L.LightningDataModule | None) -> list[Path]:
    """The files and folders a datamodule reads: its path arguments that exist."""
    hparams = dict(getattr(datamodule, "hparams", {}) or {})
    found: list[Path] = []
    for name, value in hparams.items():
        if is_input_argument(name):
            found += existing_paths(value)
    return found


def log_folder(trainer: L.Trainer) -> Path:
    """The folder the run's logger writes its versions into (``default_root_dir`` without
    a logger)."""
    logger = trainer.logger
    root = getattr(logger, "root_dir", None) or getattr(logger, "save_dir", None)
    return Path(root) if root else Path(trainer.default_root_dir)


def output_folders(trainer: L.Trainer, output_dir: str | Path | None) -> list[tuple[Path, str]]:
    """Folders a run writes files into, with how messages name them."""
    folders = [(log_folder(trainer), "log folder")]
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            folders.append((Path(callback.dirpath), "checkpoint folder"))
    if output_dir is not None:
        folders.append((Path(output_dir), "--output_dir"))
    return folders


def check_fresh_checkpoints(trainer: L.Trainer, ckpt_path: str | None) -> None:
    """Refuses a ``fit`` into a checkpoint folder that holds another run's checkpoints.

    Raises:
        DataError: naming the folder, and how to resume it or start afresh.
    """
    for callback in trainer.checkpoint_callbacks:
        folder = Path(callback.dirpath) if getattr(callback, "dirpath", None) else None
        if folder is None or not folder.is_dir():
            continue
        held = sorted(p.name for p in folder.glob("*.ckpt"))
        if not held:
            continue
        if ckpt_path in SPECIAL_CKPT_PATHS:
            continue
        if ckpt_path and Path(ckpt_path).resolve().parent == folder.resolve():
            continue
        raise DataError(
            f"{folder}: holds {held[0] if 'last.ckpt' not in held else 'last.ckpt'} of an "
            "earlier run; add --ckpt_path last to resume it, or (re)move the folder to "
            "train afresh"
        )


def check_trained_weights(
    model: L.LightningModule, subcommand: str, ckpt_path: str | None, allow_random: bool
) -> None:
    """Refuses to validate, test or predict with a model's initial (random) weights.

    Raises:
        DataError: no ``--ckpt_path`` for a model with trainable weights.
    """
    if ckpt_path or allow_random or subcommand == "fit":
        return
    if any(parameter.requires_grad for parameter in model.parameters()):
        raise DataError(
            f"--ckpt_path: {subcommand} needs trained weights; give the checkpoint of a fit "
            f"(--ckpt_path CKPT), or --allow_random_weights true to {subcommand} an untrained "
            f"{type(model).__name__}"
        )


def check_run(
    cli: Any, subcommand: str, ckpt_path: str | None, output_dir: str | Path | None = None
) -> None:
    """Every check of this module for one subcommand of a built CLI, before anything runs.

    Args:
        cli: a :class:`~protoseg.cli.ProtosegCLI` (its ``trainer``, ``model``, ``datamodule``).
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        ckpt_path: the run's ``--ckpt_path``.
        output_dir: where ``predict`` writes its files.

    Raises:
        DataError: the first check that fails, naming the file, folder or option.
    """
    trainer, model = cli.trainer, cli.model
    inputs = input_paths(cli.datamodule)
    for folder, what in output_folders(trainer, output_dir):
        check_output_folder(folder, inputs, what)
    check_output_folder(trainer.default_root_dir, inputs, "--trainer.default_root_dir", leaf=False)
    if output_dir is not None:
        claim_output_folder(output_dir)
    if subcommand == "fit":
        check_fresh_checkpoints(trainer, ckpt_path)
    if ckpt_path == "last":
        for callback in trainer.checkpoint_callbacks:
            last = Path(getattr(callback, "dirpath", "") or "") / "last.ckpt"
            if getattr(callback, "dirpath", None) and last.is_file():
                check_stage_checkpoint(last, read_checkpoint(last), class_path_of(model))
    allow = bool(getattr(cli, "allow_random_weights", False))
    check_trained_weights(model, subcommand, ckpt_path, allow)


class _Stepped(Callback):
    """Notes whether a training step finished in this run."""

    def __init__(self) -> None:
        self.stepped = False

    def on_train_batch_end(self, *args: Any) -> None:
        self.stepped = True


@contextmanager
def removed_on_failure(trainer: L.Trainer) -> Iterator[None]:
    """Removes the log version folder (and the log folder) a run created when it fails
    before a training step of its own; stopped and trained runs keep theirs."""
    logger = trainer.logger
    version_dir = Path(logger.log_dir) if logger is not None and logger.log_dir else None
    folders = (version_dir, log_folder(trainer), Path(trainer.default_root_dir))
    candidates = [p for p in folders if p is not None]
    created = [p for p in candidates if not p.exists()]
    stepped = _Stepped()
    trainer.callbacks.append(stepped)
    try:
        yield
    except Exception:
        if not stepped.stepped and trainer.is_global_zero:
            for folder in created:
                if folder == version_dir:
                    shutil.rmtree(folder, ignore_errors=True)
                elif folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        raise
    finally:
        trainer.callbacks.remove(stepped)
