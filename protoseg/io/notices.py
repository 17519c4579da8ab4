"""Notes protoseg prints once: things it did to the input that the user should know."""

from __future__ import annotations

import sys

from lightning.fabric.utilities.rank_zero import rank_zero_only

_said: set[str] = set()


def notice_once(kind: str, message: str) -> None:
    """Prints ``protoseg: note: <message>`` on stderr the first time ``kind`` comes up in
    this process (rank 0 only), e.g. the first grey image converted to RGB."""
    if kind in _said:
        return
    _said.add(kind)
    if getattr(rank_zero_only, "rank", 0) == 0:
        sys.stderr.write(f"protoseg: note: {message}\n")
