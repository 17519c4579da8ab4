"""What every benchmark records beside its figures: the command, the source, the machine and
the date."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from protoseg.io.errors import DataError
from protoseg.provenance import (  # noqa: F401 (the benchmarks' names for them)
    CPU_LIMIT_VARIABLES,
    cpu_model,
    machine_info,
    source_state,
    write_result,
)

ROOT = Path(__file__).resolve().parents[1]


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


RUN_MARK = ".protoseg_run"
"""The file that marks a folder as a benchmark's run folder, which a rerun may empty."""


def fresh_run_dir(run_dir: str | Path) -> Path:
    """Empties ``run_dir`` so that a rerun's ``last.ckpt`` and outputs are its own.

    Lightning names a new checkpoint ``last-v1.ckpt`` when ``last.ckpt`` exists, so a rerun
    into a used folder would leave the Makefile's ``predict`` step reading the old weights.
    Only a benchmark's own folder (it holds :data:`RUN_MARK`), an empty one or one under
    ``runs/`` (protoseg's scratch, which ``make clean`` removes) is emptied.

    Raises:
        DataError: ``run_dir`` holds files of something else.
    """
    run_dir = Path(run_dir)
    if run_dir.exists():
        ours = (run_dir / RUN_MARK).is_file() or "runs" in run_dir.resolve().parts
        if not ours and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise DataError(
                f"{run_dir}: --run-dir holds files of something else (no {RUN_MARK}); "
                "give a new or empty folder"
            )
        print(f"benchmark: removing the previous run in {run_dir}")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / RUN_MARK).write_text("a protoseg benchmark's run folder: a rerun empties it\n")
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


def shipped_postprocess(config: str | Path) -> dict[str, Any]:
    """The post-processing a head's config ships: ``model.init_args.postprocess`` as
    ``{"class_path", "init_args"}``, without the detector's file (a head's checkpoint carries
    the detector's network itself).

    A benchmark that reads a head trained before these settings were chosen (its checkpoint
    stores the settings of its day) applies these over them, so its figures are those of the
    shipped settings.

    Raises:
        DataError: ``config`` is missing or names no post-processing.
    """
    import yaml

    path = Path(config)
    try:
        model = yaml.safe_load(path.read_text())["model"]
        postprocess = model["init_args"]["postprocess"]
        class_path = postprocess["class_path"]
    except FileNotFoundError:
        raise DataError(f"{path}: no such config") from None
    except (KeyError, TypeError, yaml.YAMLError):
        raise DataError(f"{path}: names no model.init_args.postprocess.class_path") from None
    init_args = dict(postprocess.get("init_args") or {})
    init_args.pop("detector", None)
    return {"class_path": class_path, "init_args": init_args}
