"""Where a stage's training step spends its CPU time: a short ``protoseg fit`` with a clock.

Runs ``protoseg fit --config CONFIG [ARGS]`` for ``--steps`` steps in this process, its data
loaded in this process too (``num_workers 0``, so that the loader's CPU time is counted here),
and measures each step's phases in CPU seconds of this process (all its threads) and in wall
seconds: the batch (the loader plus the module's ``on_after_batch_transfer``, e.g. the PSM's
view augmentation), the forward pass and loss, the backward pass, the optimizer step. The
first ``--warmup`` steps are left out. CPU seconds hold on a loaded machine where wall seconds
do not: a quiet machine's wall time per step is about the CPU seconds divided by the cores
the step keeps busy (``docs/nuclei.md``, "Speed").

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/chain_profile.py \
        --stage psm --steps 14 -- --config configs/psm/monuseg.yaml --trainer.precision=32-true

Each ``--stage`` is kept under its name in ``--output`` (other stages' entries stay), with the
command that measured it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from protoseg.provenance import command_line  # noqa: E402

PHASES = ("batch", "forward", "backward", "optimizer")


class StepClock(L.Callback):
    """CPU and wall seconds of each training step's phases (see the module's docstring)."""

    def __init__(self) -> None:
        self.marks: list[dict[str, tuple[float, float]]] = []
        self._last: tuple[float, float] | None = None

    @staticmethod
    def now() -> tuple[float, float]:
        return time.process_time(), time.perf_counter()

    def _mark(self, name: str) -> None:
        self.marks[-1][name] = self.now()

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._last = self.now()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        assert self._last is not None
        self.marks.append({"begin": self._last})
        self._mark("batch")

    def on_before_backward(self, trainer, module, loss) -> None:
        self._mark("forward")

    def on_after_backward(self, trainer, module) -> None:
        self._mark("backward")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._mark("optimizer")
        self._last = self.marks[-1]["optimizer"]

    def summary(self, warmup: int) -> dict[str, Any]:
        """Median CPU and wall seconds of each phase over the steps after ``warmup``."""
        steps = [m for m in self.marks[warmup:] if len(m) == len(PHASES) + 1]
        result: dict[str, Any] = {"steps_timed": len(steps)}
        for clock, index in (("cpu", 0), ("wall", 1)):
            phases = {}
            for before, phase in zip(("begin", *PHASES[:-1]), PHASES, strict=True):
                phases[phase] = round(
                    statistics.median(m[phase][index] - m[before][index] for m in steps), 4
                )
            phases["step"] = round(
                statistics.median(m["optimizer"][index] - m["begin"][index] for m in steps), 4
            )
            result[clock] = phases
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--run-dir", default="runs/chain_profile")
    parser.add_argument("--stage", required=True, help="the entry's name in --output")
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks/results/chain_profile.json"
    )
    parser.add_argument("fit_args", nargs=argparse.REMAINDER, help="-- then protoseg fit's")
    args = parser.parse_args()
    fit_args = [a for a in args.fit_args if a != "--"]

    import torch

    from protoseg.cli import build_cli

    clock = StepClock()
    cli = build_cli(
        [
            *fit_args,
            f"--trainer.max_steps={args.steps}",
            "--trainer.max_time=null",
            "--trainer.check_val_every_n_epoch=1000",
            "--trainer.num_sanity_val_steps=0",
            f"--trainer.logger.init_args.save_dir={args.run_dir}",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={args.run_dir}",
            "--data.init_args.num_workers=0",
        ],
        run=False,
    )
    cli.trainer.callbacks.append(clock)
    for callback in cli.trainer.callbacks:  # keep the config's checkpoint out of the way
        if isinstance(callback, L.pytorch.callbacks.ModelCheckpoint):
            callback.dirpath = str(Path(args.run_dir) / "checkpoints")
    cli.trainer.fit(cli.model, cli.datamodule)
    result = {
        "fit_args": fit_args,
        "torch_threads": torch.get_num_threads(),
        "precision": str(cli.trainer.precision),
        **clock.summary(args.warmup),
    }
    print(json.dumps(result))
    stages = {}
    if args.output.is_file():
        stages = json.loads(args.output.read_text()).get("stages", {})
    stages[args.stage] = {"command": command_line(), **result}
    write_result(args.output, {"benchmark": "chain_profile", "stages": stages})
    print(f"benchmark: {args.stage} in {args.output}")


if __name__ == "__main__":
    main()
