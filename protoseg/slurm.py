"""``protoseg slurm``: writes a ready sbatch script that trains a config with DDP under SLURM.

The script relies on Lightning's own SLURM support rather than on a launcher of ours:

- ``srun`` starts one task per GPU (``--ntasks-per-node`` = ``--gres=gpu:G``); Lightning's
  ``SLURMEnvironment`` reads ranks and the master address from SLURM's variables, so the
  trainer only needs ``num_nodes`` and ``devices`` to agree with the allocation.
- ``--signal=SIGUSR1@90`` makes SLURM warn every task 90 s before the time limit (or a
  preemption); Lightning's SLURM handler then saves ``hpc_ckpt_<n>.ckpt`` and requeues the job
  (``scontrol requeue``), and :class:`~protoseg.callbacks.preemption.PreemptionCheckpoint`
  stops after the current step and writes ``last.ckpt``. ``--requeue`` allows the requeue and
  ``--open-mode=append`` keeps one log across restarts.
- ``--ckpt_path last`` resumes from the newest ``last*.ckpt`` of the run's ``ModelCheckpoint``.
  In Lightning 2.6 a missing last checkpoint only warns and trains from scratch, so the same
  script serves the first start and every restart.

Arguments that this command does not know (after ``--`` or not) are appended to the
``protoseg fit`` line, e.g. ``--seed_everything 1`` or ``--trainer.max_steps 5000``.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from protoseg.io.images import write_text_atomic
from protoseg.usage import ToolParser

DDP_PRESET = "configs/trainer/ddp.yaml"
# [D-]HH:MM:SS, the unambiguous subset of sbatch's --time formats.
TIME_PATTERN = re.compile(r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$")
# Seconds of warning before the time limit: enough for one step plus a checkpoint write.
SIGNAL_LEAD_SECONDS = 90


def sbatch_script(
    configs: Sequence[str],
    nodes: int,
    gpus_per_node: int,
    time: str,
    partition: str,
    job_name: str | None = None,
    cpus_per_task: int = 8,
    log_dir: str = "runs/slurm",
    ddp_config: str = DDP_PRESET,
    fit_args: Sequence[str] = (),
) -> str:
    """The text of an sbatch script that runs ``protoseg fit`` on ``nodes * gpus_per_node`` GPUs.

    The DDP preset comes after the stage configs (it replaces their CPU trainer settings) and
    ``--trainer.num_nodes`` / ``--trainer.devices`` after the preset (which sets
    ``devices: -1``, ``num_nodes: 1``): later arguments win in LightningCLI.

    Args:
        configs: stage config files, in ``--config`` order.
        nodes: SLURM nodes (``--nodes``, ``trainer.num_nodes``).
        gpus_per_node: GPUs and tasks per node (``--gres=gpu:G``, ``--ntasks-per-node``,
            ``trainer.devices``).
        time: wall-time limit, ``HH:MM:SS`` or ``D-HH:MM:SS``.
        partition: SLURM partition.
        job_name: ``--job-name``; defaults to the first config's stem.
        cpus_per_task: CPU cores per task (DataLoader workers + the training process).
        log_dir: folder of the job's log ``<job name>-<job id>.out`` (must exist at submission).
        ddp_config: trainer preset with ``strategy: ddp``.
        fit_args: extra ``protoseg fit`` arguments, appended last.

    Raises:
        ValueError: no config, a count below 1, a malformed time or an empty partition.
    """
    if not configs:
        raise ValueError("at least one --config is needed")
    for name, value in [
        ("nodes", nodes),
        ("gpus_per_node", gpus_per_node),
        ("cpus_per_task", cpus_per_task),
    ]:
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not TIME_PATTERN.match(time):
        raise ValueError(f"time must be HH:MM:SS or D-HH:MM:SS, got {time!r}")
    if not partition.strip():
        raise ValueError("partition must not be empty")
    name = job_name or Path(configs[0]).stem
    fit: list[str] = []
    for config in configs:
        fit += ["--config", config]
    fit += ["--config", ddp_config]
    fit += ["--trainer.num_nodes", str(nodes), "--trainer.devices", str(gpus_per_node)]
    fit += ["--ckpt_path", "last", *fit_args]
    # srun asks for the cores again: since Slurm 22.05 it no longer inherits sbatch's
    # --cpus-per-task, and each task would get one core for its loader workers.
    launcher = f"srun --cpus-per-task={cpus_per_task} protoseg fit"
    command = " \\\n  ".join([launcher, *_pairs(fit)])
    header = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --partition={partition}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={gpus_per_node}",
        f"#SBATCH --gres=gpu:{gpus_per_node}",
        f"#SBATCH --cpus-per-task={cpus_per_task}",
        f"#SBATCH --time={time}",
        f"#SBATCH --signal=SIGUSR1@{SIGNAL_LEAD_SECONDS}",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={log_dir}/%x-%j.out",
    ]
    body = [
        "",
        "# Written by `protoseg slurm`. Submit from the project root with the environment that has",
        "# protoseg installed active (sbatch exports it to the job): sbatch <this file>",
        "# On SIGUSR1 (90 s before the limit or a preemption) Lightning saves a checkpoint and",
        "# requeues the job; the requeued job resumes from the last checkpoint (--ckpt_path last).",
        "set -euo pipefail",
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
        "",
        command,
        "",
    ]
    return "\n".join(header + body)


def _pairs(words: list[str]) -> list[str]:
    """Shell-quoted words, an option and its value on one line: one line per setting."""
    lines: list[str] = []
    for word in words:
        quoted = shlex.quote(word)
        if lines and word and not word.startswith("-") and lines[-1].startswith("-"):
            lines[-1] += f" {quoted}"
        else:
            lines.append(quoted)
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="protoseg slurm",
        description="Write an sbatch script that trains a config with DDP on SLURM GPUs, "
        "requeues itself on preemption and resumes from the last checkpoint. Unknown "
        "arguments are passed on to `protoseg fit`.",
    )
    parser.add_argument("--config", action="append", required=True, help="stage config (repeat)")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, required=True)
    parser.add_argument("--time", required=True, help="HH:MM:SS or D-HH:MM:SS")
    parser.add_argument("--partition", required=True)
    parser.add_argument("--job-name", default=None, help="default: the first config's stem")
    parser.add_argument("--cpus-per-task", type=int, default=8)
    parser.add_argument("--log-dir", default="runs/slurm", help="created when missing")
    parser.add_argument("--ddp-config", default=DDP_PRESET)
    parser.add_argument("--output", default=None, help="script file (default: stdout)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``protoseg slurm ...``: prints the script, or writes it to ``--output``."""
    parser = build_parser()
    args, fit_args = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    fit_args = [a for a in fit_args if a != "--"]
    for config in [*args.config, args.ddp_config]:
        if not Path(config).is_file():
            parser.error(f"{config}: config file does not exist")
    try:
        text = sbatch_script(
            args.config,
            args.nodes,
            args.gpus_per_node,
            args.time,
            args.partition,
            job_name=args.job_name,
            cpus_per_task=args.cpus_per_task,
            log_dir=args.log_dir,
            ddp_config=args.ddp_config,
            fit_args=fit_args,
        )
    except ValueError as error:
        parser.error(str(error))
    # sbatch does not create the log folder, and a job whose log cannot open fails silently.
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    output = Path(args.output)
    write_text_atomic(output, text)
    print(f"protoseg: wrote {output} (submit with: sbatch {output})", file=sys.stderr)
    return 0
