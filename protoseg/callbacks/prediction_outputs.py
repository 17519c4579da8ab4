"""The folder a prediction run writes into: protoseg's own, listed, and never a stranger's.

``protoseg predict`` attaches :class:`PredictionOutputs` beside whichever writer it chose
(instance maps, slides, tissue class maps). Before anything is written the folder must be
new, empty or an earlier protoseg run's (it holds ``protoseg_outputs.json``): files of any
other folder are never replaced. At the end the manifest lists every file in the folder and
the inputs the datamodule skipped as unreadable (its ``skipped``: ``skip_unreadable``),
which are also printed. A run that fails before writing a file removes the folder it
created.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from protoseg.io.outputs import MANIFEST, claim_output_folder, write_manifest


def _gathered(trainer: L.Trainer, items: list[Any]) -> list[Any]:
    """Every rank's ``items``, in rank order (this rank's alone without a process group)."""
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        every: list[list[Any] | None] = [None] * trainer.world_size
        dist.all_gather_object(every, items)
        return [item for part in every for item in (part or [])]
    return items


def _files(folder: Path) -> list[Path]:
    """The folder's files, hidden ones (temporary files) and the manifest aside."""
    return [
        path
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        and path.name != MANIFEST
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]


class PredictionOutputs(Callback):
    """Claims, lists and (after a failed start) removes a prediction run's output folder.

    Args:
        folder: the writer's output folder.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._created = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Refuses a folder of files protoseg did not write, then marks it protoseg's.

        Raises:
            DataError: the folder holds files protoseg did not write.
        """
        if stage != "predict":
            return
        claim_output_folder(self.folder)
        self._created = not self.folder.exists()
        trainer.strategy.barrier("prediction_outputs")  # every rank checked before rank 0 marks
        if trainer.is_global_zero:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_manifest(self.folder, [])

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Attached after the writer: the slide writer's last files are in by now.
        skipped = _gathered(trainer, list(getattr(trainer.datamodule, "skipped", []) or []))
        trainer.strategy.barrier("prediction_outputs")
        if not trainer.is_global_zero:
            return
        unique = list({(e["path"], e["error"]): e for e in skipped}.values())
        manifest = write_manifest(self.folder, _files(self.folder), unique)
        for entry in unique:
            sys.stderr.write(f"protoseg: skipped {entry['path']}: {entry['error']}\n")
        if unique:
            sys.stderr.write(f"protoseg: {len(unique)} input(s) skipped, listed in {manifest}\n")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """A folder this run created and wrote no file into goes."""
        if not (self._created and trainer.is_global_zero and self.folder.is_dir()):
            return
        if _files(self.folder):
            return
        (self.folder / MANIFEST).unlink(missing_ok=True)
        for folder in sorted(self.folder.rglob("*"), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if not any(self.folder.iterdir()):
            self.folder.rmdir()
