"""The one exception type for input the user gave that cannot be used."""

from __future__ import annotations


class DataError(ValueError):
    """A data file or folder, a checkpoint or an option value cannot be used.

    Every message starts with the offending path or option (``"<path>: <problem>"``), so that
    a run over hundreds of files says which one to fix; ``protoseg`` prints it as one line
    and exits with status 2 (:func:`protoseg.cli.main`). Subclasses :class:`ValueError`, so
    callers that already catch bad values keep working.
    """


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
