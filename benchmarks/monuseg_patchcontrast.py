"""Label-free chain on MoNuSeg: patch-contrastive FCNN -> pseudo masks -> segmentation head.

No stage reads a label for training; the true labels of the 30 training images only score
the pseudo masks and the final head (a fit score, not a held-out one; the test labels are
held back). Writes parameters, the wall time of each stage and the validation figures.

    python benchmarks/monuseg_patchcontrast.py --data-root ../shared/data/monuseg/train \
        --output benchmarks/results/monuseg_patchcontrast.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import bench_overrides, fresh_run_dir, rounded, write_result  # noqa: E402
from protoseg.callbacks.prediction_writer import InstancePredictionWriter  # noqa: E402
from protoseg.cli import build_cli  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/monuseg/train")
    parser.add_argument("--output", default="benchmarks/results/monuseg_patchcontrast.json")
    parser.add_argument("--fcnn-config", default="configs/patch_contrast/monuseg.yaml")
    parser.add_argument("--segment-config", default="configs/patch_contrast/segment_monuseg.yaml")
    parser.add_argument("--run-dir", default="runs/bench_patchcontrast")
    parser.add_argument("--segment-steps", type=int, default=None, help="override the config's")
    return parser.parse_args()


def timed(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``function(*args, **kwargs)`` and its wall time in seconds."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, round(time.perf_counter() - start, 1)


def main() -> None:
    args = parse_args()
    run_dir = fresh_run_dir(args.run_dir)
    fcnn_dir, pseudo_dir, segment_dir = (
        run_dir / "fcnn",
        run_dir / "pseudo_masks",
        run_dir / "segment",
    )

    fcnn = build_cli(bench_overrides(args.fcnn_config, fcnn_dir, args.data_root), run=False)
    _, fcnn_seconds = timed(fcnn.trainer.fit, fcnn.model, datamodule=fcnn.datamodule)
    fcnn_steps = fcnn.trainer.global_step
    (fcnn_metrics,) = fcnn.trainer.validate(fcnn.model, datamodule=fcnn.datamodule)
    fcnn.trainer.callbacks.append(InstancePredictionWriter(pseudo_dir, geojson=False))
    _, pseudo_seconds = timed(
        fcnn.trainer.predict, fcnn.model, datamodule=fcnn.datamodule, return_predictions=False
    )

    overrides = [
        *bench_overrides(args.segment_config, segment_dir, args.data_root),
        f"--data.pseudo_mask_dir={pseudo_dir}",
    ]
    if args.segment_steps is not None:
        overrides.append(f"--trainer.max_steps={args.segment_steps}")
    segment = build_cli(overrides, run=False)
    _, segment_seconds = timed(segment.trainer.fit, segment.model, datamodule=segment.datamodule)
    (segment_metrics,) = segment.trainer.validate(segment.model, datamodule=segment.datamodule)

    separation = fcnn.model.separation.tolist()
    figures = {
        "benchmark": "monuseg_patchcontrast",
        "configs": [args.fcnn_config, args.segment_config],
        "train_images": len(fcnn.datamodule.train_records),
        "labels_used_for_training": False,
        "validation_is_held_out": False,
        "fcnn": {
            "parameters": sum(p.numel() for p in fcnn.model.net.parameters()),
            "steps": fcnn_steps,
            "max_steps": fcnn.trainer.max_steps,
            "converged_at_step": fcnn.model.converged_at_step,
            "separation_positive": round(separation[0], 4),
            "separation_negative": round(separation[1], 4),
            "train_wall_seconds": fcnn_seconds,
            "pseudo_mask_wall_seconds": pseudo_seconds,
            "pseudo_mask_validation": rounded(fcnn_metrics),
        },
        "segment": {
            "parameters": sum(p.numel() for p in segment.model.parameters()),
            "steps": segment.trainer.global_step,
            "train_wall_seconds": segment_seconds,
            "validation": rounded(segment_metrics),
        },
        "chain_wall_seconds": round(fcnn_seconds + pseudo_seconds + segment_seconds, 1),
        "pseudo_mask_dir": pseudo_dir.as_posix(),
        "checkpoint": Path(segment.trainer.checkpoint_callback.last_model_path).as_posix(),
    }
    path = write_result(args.output, figures)
    print(f"wrote {path}: pseudo masks {figures['fcnn']['pseudo_mask_validation']}")
    print(f"segmentation head {figures['segment']['validation']}")


if __name__ == "__main__":
    main()
