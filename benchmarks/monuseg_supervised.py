"""Fully supervised reference row: the segmentation head trained on MoNuSeg's true labels.

Runs ``configs/monuseg/segment.yaml`` through the protoseg CLI on every training image
(``--val-fraction 0``: validation then scores the fit on those same images, which is not a
held-out figure) or on a seeded split (``--val-fraction 0.2``: 24 train / 6 held out), times
the training, validates the final weights and writes the figures as JSON.

    python benchmarks/monuseg_supervised.py --data-root ../shared/data/monuseg/train \
        --output benchmarks/results/monuseg_supervised.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import bench_overrides, fresh_run_dir, rounded, write_result  # noqa: E402
from protoseg.cli import build_cli  # noqa: E402
from protoseg.summary import SUMMARY_METRICS, rows_of, summary_row  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/monuseg/train")
    parser.add_argument("--output", default="benchmarks/results/monuseg_supervised.json")
    parser.add_argument("--config", default="configs/monuseg/segment.yaml")
    parser.add_argument("--val-fraction", type=float, default=0.0)
    parser.add_argument("--max-steps", type=int, default=None, help="override the config's")
    parser.add_argument("--run-dir", default="runs/bench_monuseg_supervised")
    parser.add_argument("extra", nargs="*", help="further CLI overrides, e.g. --trainer.x=y")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    run_dir = fresh_run_dir(args.run_dir)
    overrides = [
        *bench_overrides(args.config, run_dir, args.data_root),
        f"--data.val_fraction={args.val_fraction}",
    ]
    if args.max_steps is not None:
        overrides.append(f"--trainer.max_steps={args.max_steps}")
    cli = build_cli([*overrides, *args.extra], run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    train_seconds = time.perf_counter() - start
    checkpoint = Path(cli.trainer.checkpoint_callback.last_model_path)
    start = time.perf_counter()
    (metrics,) = cli.trainer.validate(cli.model, datamodule=cli.datamodule)
    validate_seconds = time.perf_counter() - start
    datamodule = cli.datamodule
    figures = {
        "benchmark": "monuseg_supervised",
        "config": args.config,
        "train_images": len(datamodule.train_records),
        "val_images": len(datamodule.val_records),
        "validation_is_held_out": args.val_fraction > 0,
        "steps": cli.trainer.global_step,
        "train_wall_seconds": round(train_seconds, 1),
        "validate_wall_seconds": round(validate_seconds, 1),
        "parameters": sum(p.numel() for p in cli.model.parameters()),
        "validation": rounded(metrics),
        "checkpoint": checkpoint.as_posix(),
    }
    figures["summary"] = [
        summary_row(
            "Supervised U-Net (resnet18, random init), its own 3-class split",
            "full",
            "held-out" if figures["validation_is_held_out"] else "fit",
            rows_of(figures["validation"], SUMMARY_METRICS),
            images=figures["val_images"],
            data="/".join(Path(args.data_root).parts[-2:]),
            wall_seconds=figures["train_wall_seconds"],
            precision=str(cli.trainer.precision),
        )
    ]
    path = write_result(args.output, figures)
    print(f"wrote {path}: {figures['validation']} in {figures['train_wall_seconds']} s")


if __name__ == "__main__":
    main()
