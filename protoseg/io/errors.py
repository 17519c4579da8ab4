"""The one exception type for input the user gave that cannot be used, and how it is shown."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class DataError(ValueError):
    """A data file or folder, a checkpoint or an option value cannot be used.

    Every message starts with the offending path or option (``"<path>: <problem>"``), so that
    a run over hundreds of files says which one to fix; ``protoseg`` prints it as one line
    and exits with status 2 (:func:`protoseg.cli.main`). Subclasses :class:`ValueError`, so
    callers that already catch bad values keep working.
    """


class NoLabelsError(DataError):
    """``validate`` or ``test`` found no labelled image to score. A command alone stops with
    it (status 2); ``protoseg chain`` records the step as "no labels to score" and goes on,
    so that a label-free chain runs on a folder of images without labels."""


def one_line(error: BaseException) -> str:
    """An error's message on one line.

    A DataLoader worker's exception comes back re-raised with the worker's whole traceback
    in its message ("Caught DataError in DataLoader worker process 0. Original Traceback
    ..."); only its last line, the original message, is kept.
    """
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        for name in (f"{type(error).__module__}.{type(error).__qualname__}", type(error).__name__):
            last = last.removeprefix(f"{name}: ")
        text = last
    return " ".join(text.split())


@contextmanager
def reported() -> Iterator[None]:
    """Bad input ends the command with one line and status 2, as every ``protoseg``
    command does: a :class:`DataError` or missing file raised inside is written as
    ``protoseg: error: <file or option>: <problem>`` and the process exits with 2.
    ``PROTOSEG_TRACEBACK=1`` raises it instead, traceback and all."""
    try:
        yield
    except (DataError, FileNotFoundError) as error:
        if os.environ.get("PROTOSEG_TRACEBACK"):
            raise
        sys.stderr.write(f"protoseg: error: {one_line(error)}\n")
        raise SystemExit(2) from None
