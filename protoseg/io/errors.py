"""The one exception type for input files that cannot be used."""

from __future__ import annotations


class DataError(ValueError):
    """A data file or folder is missing, unreadable or malformed.

    Every message starts with the offending path (``"<path>: <problem>"``), so that a run over
    hundreds of files says which one to fix. Subclasses :class:`ValueError`, so callers that
    already catch bad values keep working.
    """
