"""What protoseg keeps off the console: lines that every run printed and no user acts on.

Lightning prints, on every run, a tip to install litlogger, which accelerators exist ("GPU
available: False, used: False", even on a machine without one), the seed it set (the saved
config has it), the precision plugin it chose and a deprecation warning of its own code
(``_pytree``); the model summary adds a note on bf16 sizes. Everything else (the model
summary, "Restoring states from ...", "`Trainer.fit` stopped", warnings about the user's own
settings) stays. :func:`quiet_lightning` installs the filters; ``protoseg`` calls it on
every run.
"""

from __future__ import annotations

import logging
import warnings

#: Starts of Lightning's informational log lines that are dropped.
NOISE_LOGS = (
    "💡 Tip:",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "Seed set to",
    "Using bfloat16 Automatic Mixed Precision",
    "Using 16bit Automatic Mixed Precision",
    # Before the checkpoint is read; "Restored all states" / "Loaded model weights" follow
    # once it has been.
    "Restoring states from the checkpoint path at",
)
#: Regular expressions of warning messages (from Lightning's own code) that are dropped.
NOISE_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Precision .* is not supported by the model summary",
    # main(args) is how tests and scripts run the CLI: their own sys.argv is no mistake.
    r"LightningCLI's args parameter is intended",
    # --ckpt_path last on a fresh folder (the resumable commands): a fresh start, as meant.
    r"\.ckpt_path='last' is set, but there is no last checkpoint",
    # A resumed fit writes into its own checkpoint folder (protoseg.guard refuses others'),
    # and protoseg's samplers resume mid-epoch exactly (tests/callbacks/test_preemption.py).
    r"Checkpoint directory .* exists and is not empty",
    r"You're resuming from a checkpoint that ended before the epoch ended",
    # A datamodule without labelled images returns no validation loader on purpose (the
    # datamodules' own filter is undone when they are imported while the CLI parses).
    r"Total length of `list` across ranks is zero",
)
#: Loggers those lines are logged to (a filter acts where a record is made).
NOISE_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.fabric.utilities.seed",
    "lightning_utilities.core.rank_zero",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(NOISE_LOGS)


_FILTER = _DropNoise()


def quiet_lightning() -> None:
    """Drops :data:`NOISE_LOGS` and :data:`NOISE_WARNINGS` (idempotent)."""
    for name in NOISE_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
