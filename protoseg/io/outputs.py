"""Where protoseg may write: never into, over or around what it reads, never over a stranger's file.

Three rules, each one function, used by every command that writes:

- :func:`check_output_folder`: an output folder may not be a file, unwritable, or be, lie
  inside or contain a folder the command reads (images, labels, pseudo masks, slides).
- :func:`check_output_file`: an output file may not be a folder, unwritable, or one of the
  files the command reads.
- :func:`claim_output_folder`: a folder of predictions is new, empty, or one that protoseg
  wrote before (it holds :data:`MANIFEST`); the files of any other folder are never replaced.
  :func:`write_manifest` records what a run wrote and what it skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from protoseg.io.errors import DataError
from protoseg.io.images import write_text_atomic

MANIFEST = "protoseg_outputs.json"
"""The file that marks a folder as protoseg's outputs, listing them (and skipped inputs)."""


#: Datamodule arguments that name what it reads: ``root``, ``slides`` and ``*_dir(s)``,
#: ``*_path(s)``, ``*_root``.
INPUT_ARGUMENT_SUFFIXES = ("_dir", "_dirs", "_path", "_paths", "_root")


def is_input_argument(name: str) -> bool:
    """Whether a datamodule argument of this name names files or folders it reads."""
    return name in ("root", "slides") or name.endswith(INPUT_ARGUMENT_SUFFIXES)


def existing_paths(value: Any) -> list[Path]:
    """The paths among an argument's value (a path or a list of them) that exist."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [Path(v) for v in values if isinstance(v, (str, Path)) and v and Path(v).exists()]


def _resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _writable(folder: Path) -> bool:
    """Whether ``folder`` can be created (or written into): its nearest existing ancestor is
    a writable folder."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def check_output_folder(
    folder: str | Path,
    inputs: Iterable[str | Path],
    what: str = "output folder",
    leaf: bool = True,
) -> None:
    """Refuses an output folder that would overwrite or mix with the data a command reads.

    Args:
        folder: where the command writes.
        inputs: files and folders the command reads.
        what: how the message names ``folder`` (``--output_dir``, ``checkpoint folder``).
        leaf: files are written into ``folder`` itself (then it may not contain an input
            either); False for a parent of other outputs (``default_root_dir``).

    Raises:
        DataError: ``folder`` is a file, not writable, or is, lies inside or (``leaf``)
            contains one of ``inputs``.
    """
    out = _resolved(folder)
    if out.exists() and not out.is_dir():
        raise DataError(f"{folder}: {what} is a file, not a folder")
    if not _writable(out):
        raise DataError(f"{folder}: {what} is not writable")
    for source in inputs:
        read = _resolved(source)
        if out == read:
            relation = "is"
        elif read in out.parents:
            relation = "lies inside"
        elif leaf and out in read.parents:
            relation = "contains"
        else:
            continue
        raise DataError(
            f"{folder}: {what} {relation} {source}, which this command reads; "
            "write outside the input data"
        )


def check_output_file(path: str | Path, inputs: Iterable[str | Path], what: str = "output") -> None:
    """Refuses an output file that would replace what the command reads.

    Raises:
        DataError: ``path`` is a folder, lies in a folder that cannot be written, or is one
            of ``inputs``.
    """
    out = _resolved(path)
    if out.is_dir():
        raise DataError(f"{path}: {what} is a folder, not a file")
    if not _writable(out.parent):
        raise DataError(f"{path}: {what} folder is not writable")
    for source in inputs:
        if out == _resolved(source):
            raise DataError(f"{path}: {what} is {source}, which this command reads")


def claim_output_folder(folder: str | Path) -> None:
    """Takes ``folder`` for a run's outputs: it must be new, empty (hidden files aside) or
    hold :data:`MANIFEST` (an earlier protoseg run's outputs, which may be replaced).

    Raises:
        DataError: ``folder`` holds files that protoseg did not write.
    """
    folder = Path(folder)
    if not folder.is_dir() or (folder / MANIFEST).is_file():
        return
    strangers = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    if strangers:
        raise DataError(
            f"{folder}: output folder holds files protoseg did not write ({strangers[0]}"
            f"{f' and {len(strangers) - 1} more' if len(strangers) > 1 else ''}); "
            "choose a new or empty folder"
        )


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of an output folder (empty lists when there is none or it is unreadable)."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text())
        return {"written": list(data["written"]), "skipped": list(data.get("skipped", []))}
    except (OSError, ValueError, KeyError, TypeError):
        return {"written": [], "skipped": []}


def write_manifest(
    folder: str | Path,
    written: Sequence[str | Path],
    skipped: Sequence[dict[str, str]] = (),
    keep_earlier: bool = True,
) -> Path:
    """Writes :data:`MANIFEST` into ``folder`` (atomically).

    Args:
        folder: the output folder.
        written: files written, absolute or relative to ``folder``.
        skipped: ``{"path", "error"}`` of each input that could not be read and was skipped.
        keep_earlier: also list files an earlier run's manifest listed that still exist.
    """
    folder = Path(folder)
    names = {Path(os.path.relpath(Path(p), folder)).as_posix() for p in written}
    if keep_earlier:
        names |= {n for n in read_manifest(folder)["written"] if (folder / n).exists()}
    payload = {"written": sorted(names), "skipped": list(skipped)}
    path = folder / MANIFEST
    write_text_atomic(path, json.dumps(payload, indent=1) + "\n")
    return path
