"""Notes protoseg prints once: things it did to the input that the user should know."""

from __future__ import annotations

import os
import sys

_said: set[str] = set()


def _rank() -> int:
    """This process's rank: Lightning's where a run has set it, else the launcher's
    environment (so that tools reading images, e.g. ``protoseg score``, need no Lightning)."""
    rank_zero = sys.modules.get("lightning.fabric.utilities.rank_zero")
    rank = getattr(getattr(rank_zero, "rank_zero_only", None), "rank", None)
    if rank is not None:
        return int(rank)
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def notice_once(kind: str, message: str) -> None:
    """Prints ``protoseg: note: <message>`` on stderr the first time ``kind`` comes up in
    this process (rank 0 only), e.g. the first grey image converted to RGB."""
    if kind in _said:
        return
    _said.add(kind)
    if _rank() == 0:
        sys.stderr.write(f"protoseg: note: {message}\n")
