"""What every benchmark records beside its figures: the command, the source, the machine and
the date."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from protoseg.io.images import write_text_atomic
from protoseg.precision import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


CPU_LIMIT_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")
"""Environment variables that change how fast the same CPU runs a benchmark."""


def machine_info() -> dict[str, Any]:
    """CPU model and core count, memory, GPU model (if any), library versions, and the
    :data:`CPU_LIMIT_VARIABLES` that are set (e.g. oneDNN held to AVX2 to time an older CPU)."""
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
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def source_state(root: Path = ROOT) -> dict[str, Any]:
    """The git commit the benchmark ran from and whether tracked files other than
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


def write_result(path: str | Path, figures: dict[str, Any]) -> Path:
    """Writes ``figures`` with command, source commit, machine and UTC date as JSON
    (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source_state(),
        "machine": machine_info(),
        **figures,
    }
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
    return path


def bench_overrides(
    config: str, run_dir: str | Path, data_root: str, accelerator: str | None = None
) -> list[str]:
    """CLI arguments that train ``config`` into ``run_dir`` the way benchmarks time it.

    Validation runs once, after training (the benchmark times training, not intermediate
    checks), and the only callback is a checkpoint that keeps ``last.ckpt``. ``accelerator``
    (e.g. ``gpu``) replaces the config's ``trainer.accelerator``; None keeps it.
    """
    run_dir = Path(run_dir)
    device = [] if accelerator is None else [f"--trainer.accelerator={accelerator}"]
    return [
        f"--config={config}",
        f"--data.root={data_root}",
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger.init_args.save_dir={run_dir}",
        "--trainer.check_val_every_n_epoch=1000",
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={run_dir}/checkpoints",
        "--trainer.callbacks.save_last=true",
        "--trainer.callbacks.save_top_k=0",
        "--trainer.num_sanity_val_steps=0",
        *device,
    ]


def rounded(metrics: dict[str, Any], prefix: str = "val/") -> dict[str, float]:
    """Validation metrics without their prefix, rounded to 4 decimals."""
    return {k.removeprefix(prefix): round(float(v), 4) for k, v in metrics.items()}


def fresh_run_dir(run_dir: str | Path) -> Path:
    """Empties ``run_dir`` so that a rerun's ``last.ckpt`` and outputs are its own.

    Lightning names a new checkpoint ``last-v1.ckpt`` when ``last.ckpt`` exists, so a rerun
    into a used folder would leave the Makefile's ``predict`` step reading the old weights.
    """
    run_dir = Path(run_dir)
    if run_dir.exists():
        print(f"benchmark: removing the previous run in {run_dir}")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    return run_dir


def timed(function: Any, *args: Any, label: str | None = None, **kwargs: Any) -> tuple[Any, float]:
    """``function(*args, **kwargs)`` and its wall time in seconds (0.1 s).

    With ``label`` the time is also printed as soon as it is known, so that a run cut short
    (a job's time limit) still shows the stages it finished.
    """
    start = time.perf_counter()
    result = function(*args, **kwargs)
    seconds = round(time.perf_counter() - start, 1)
    if label is not None:
        print(f"benchmark: {label} in {seconds} s", flush=True)
    return result, seconds
