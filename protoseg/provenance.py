"""What a recorded result carries beside its figures: the command, the source commit, the
machine and the date (``protoseg chain --output`` and every benchmark write it)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from protoseg.io.images import write_text_atomic

#: The checkout protoseg runs from (an editable install); not a git top for an installed wheel.
SOURCE_ROOT = Path(__file__).resolve().parents[1]

CPU_LIMIT_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")
"""Environment variables that change how fast the same CPU runs a benchmark."""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model and core count, memory, GPU model (if any), library versions, the
    :data:`CPU_LIMIT_VARIABLES` that are set (e.g. oneDNN held to AVX2 to time an older CPU)
    and the load average."""
    import torch

    from protoseg.precision import cpu_has_native_bf16

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_limits": {k: os.environ[k] for k in CPU_LIMIT_VARIABLES if k in os.environ},
    }
    if hasattr(os, "getloadavg"):
        # Runnable processes over the last 5 minutes: above the core count, others shared the
        # machine and the times are not the machine's own.
        info["load_average_5min"] = round(os.getloadavg()[1], 1)
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def source_state(root: Path = SOURCE_ROOT) -> dict[str, Any]:
    """The git commit the run came from and whether tracked files other than
    ``benchmarks/results`` (which benchmarks write) differed from it.

    ``{"commit": None}`` when ``root`` is not the top of a git checkout (e.g. an unpacked
    sdist, even inside someone else's repository) or git is missing.
    """

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root.resolve():
            return {"commit": None}
        commit = git("rev-parse", "HEAD")
        modified = bool(
            git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
        )
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None}
    return {"commit": commit, "modified": modified}


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed: ``argv`` (default ``sys.argv``), shell-quoted, the program
    ``protoseg`` when it is the console script."""
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0])
    first = program.name if program.name == "protoseg" else program.as_posix()
    return " ".join(shlex.quote(a) for a in [first, *argv[1:]])


def write_result(path: str | Path, figures: dict[str, Any], command: str | None = None) -> Path:
    """Writes ``figures`` with the command (default: this process's), source commit, machine
    and UTC date as JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": command_line() if command is None else command,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source_state(),
        "machine": machine_info(),
        **figures,
    }
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
    return path
