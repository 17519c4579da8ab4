"""Saving hyperparameters of modules whose constructor takes other modules."""

from __future__ import annotations

import inspect
import warnings

import lightning as L
from torch import nn


def save_init_hyperparameters(module: L.LightningModule) -> None:
    """``save_hyperparameters()`` for a constructor that takes injected ``nn.Module`` parts.

    Built by LightningCLI, the injected parts arrive in the hparams as their ``class_path``
    config, which is what ``load_from_checkpoint`` needs to rebuild them: keep those. Built
    in Python, they arrive as module objects, whose weights the state dict already holds:
    drop those rather than pickling them into the checkpoint a second time.

    Call it from the module's ``__init__``.
    """
    caller = inspect.currentframe()
    frame = caller.f_back if caller is not None else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
        module.save_hyperparameters(frame=frame)
    injected = [key for key, value in module.hparams.items() if isinstance(value, nn.Module)]
    module.remove_ignored_hparams(injected)
