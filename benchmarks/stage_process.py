"""Runs one ``protoseg`` Lightning subcommand and writes what it measured to a JSON file.

``python -m benchmarks.stage_process OUT.json validate --config ...``: the subcommand runs as
``protoseg`` runs it; then ``OUT.json`` gets the trainer's final logged metrics and, on a
GPU, the peak GPU memory. The parent (:mod:`benchmarks.wsss4luad_camsam`) reads this
process's peak resident memory from ``os.wait4``, so each stage's memory is its own.
"""

from __future__ import annotations

import json
import sys

import torch

from protoseg.cli import build_cli
from protoseg.io.images import write_text_atomic


def main(argv: list[str]) -> None:
    output, args = argv[0], argv[1:]
    cli = build_cli(args)
    metrics = {
        key: float(value)
        for key, value in cli.trainer.callback_metrics.items()
        if isinstance(value, (int, float, torch.Tensor)) and torch.as_tensor(value).numel() == 1
    }
    record = {"metrics": metrics}
    if torch.cuda.is_available():
        record["gpu_peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    write_text_atomic(output, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
