"""What a prediction writer wrote in one run, and the manifest that says so.

Both prediction writers (:class:`~protoseg.callbacks.prediction_writer.InstancePredictionWriter`,
:class:`~protoseg.callbacks.slide_writer.SlidePredictionWriter`) check their folder with
:meth:`WrittenFiles.start` (refused when it holds files protoseg did not write), call
:meth:`~WrittenFiles.before_write` before a file goes in and :meth:`~WrittenFiles.add`
after, and end with :meth:`~WrittenFiles.finish`: ``protoseg_outputs.json`` beside the
outputs lists them and the inputs skipped as unreadable, which are also printed. A run that
fails before its first file leaves no folder it created behind (:meth:`~WrittenFiles.abandon`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch.distributed as dist

from protoseg.io.outputs import MANIFEST, claim_output_folder, write_manifest


def _gathered(trainer: L.Trainer, items: list[Any]) -> list[Any]:
    """Every rank's ``items``, in rank order (this rank's alone without a process group)."""
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        every: list[list[Any] | None] = [None] * trainer.world_size
        dist.all_gather_object(every, items)
        return [item for part in every for item in (part or [])]
    return items


class WrittenFiles:
    """The files one run writes into ``folder``.

    Args:
        folder: the writer's output folder.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.paths: list[Path] = []
        self.skipped: list[dict[str, str]] = []
        self._new = False
        self._marked = True  # until start(): a writer used outside a run marks nothing

    def start(self, trainer: L.Trainer) -> None:
        """Checks the folder before the run writes into it.

        Raises:
            DataError: the folder holds files protoseg did not write.
        """
        self.paths, self.skipped = [], []
        self._marked = False
        claim_output_folder(self.folder)
        self._new = not self.folder.exists()

    def before_write(self) -> None:
        """Marks the folder protoseg's (an empty manifest) before the run's first file
        (after :meth:`start`: a writer called outside a run writes no manifest)."""
        if not self._marked:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_manifest(self.folder, [])
            self._marked = True

    def add(self, *paths: Path) -> None:
        """Notes files written."""
        self.paths.extend(paths)

    def skip(self, path: str | Path, error: str) -> None:
        """Notes an input that could not be read and was left out."""
        self.skipped.append({"path": str(path), "error": error})

    def abandon(self) -> None:
        """After an exception: a folder this run created and wrote no file into goes."""
        if not self._new or self.paths or not self.folder.is_dir():
            return
        (self.folder / MANIFEST).unlink(missing_ok=True)
        for folder in sorted(self.folder.rglob("*"), reverse=True):  # empty subfolders
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if not any(self.folder.iterdir()):
            self.folder.rmdir()

    def finish(self, trainer: L.Trainer, skipped: list[dict[str, str]] | None = None) -> None:
        """Writes the manifest (rank 0) and names the skipped inputs on stderr.

        Args:
            trainer: the run's trainer (the lists of every rank are gathered).
            skipped: inputs the datamodule left out (the same on every rank).
        """
        paths = _gathered(trainer, [str(p) for p in self.paths])
        left_out = list(skipped or []) + _gathered(trainer, self.skipped)
        if not trainer.is_global_zero:
            return
        manifest = write_manifest(self.folder, paths, left_out)
        for entry in left_out:
            sys.stderr.write(f"protoseg: skipped {entry['path']}: {entry['error']}\n")
        if left_out:
            sys.stderr.write(f"protoseg: {len(left_out)} input(s) skipped, listed in {manifest}\n")
