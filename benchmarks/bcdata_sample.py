"""PSM's label-free two-class cell detection on the one real BCData image of the data folder.

``../shared/data/bcdata_sample`` holds one Ki-67 image (640 x 640) and one point file whose 32
points all sit on DAB-positive (brown) cells; its class is not stated and the image's negative
(blue) cells are not annotated. The sample is laid out in BCData's official layout in
``--run-dir/root`` (the image as the train and validation split, its points as the positive
file, an empty negative file), the activation network of ``configs/psm/bcdata.yaml`` trains
on crops of the image (no labels), and its cells are scored against the 32 points: precision,
recall and F1 of the positive class, and the share of the points found at all (any class).
Precision of the negative class cannot be scored here (no negative points).

    python benchmarks/bcdata_sample.py --sample ../shared/data/bcdata_sample \
        --output benchmarks/results/bcdata_sample.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import bench_overrides, fresh_run_dir, timed, write_result  # noqa: E402
from protoseg.datamodules.bcdata import read_points_h5  # noqa: E402
from protoseg.metrics.detection import detection_counts, detection_scores  # noqa: E402

POSITIVE = 1
"""Class id of DAB-positive cells (:data:`protoseg.datamodules.bcdata.CLASSES`)."""


def official_layout(sample: Path, root: Path) -> np.ndarray:
    """Writes the sample into BCData's layout under ``root``; returns its (N, 2) points."""
    image = sample / "test" / "images" / "0.png"
    points = read_points_h5(sample / "test" / "annotations" / "0.h5")
    for split in ("train", "validation"):
        (root / "images" / split).mkdir(parents=True)
        shutil.copyfile(image, root / "images" / split / "0.png")
    for name, values in (("positive", points), ("negative", np.zeros((0, 2), np.float32))):
        folder = root / "annotations" / "validation" / name
        folder.mkdir(parents=True)
        with h5py.File(folder / "0.h5", "w") as handle:
            handle.create_dataset("coordinates", data=values)
    return points


def scores(found: np.ndarray, truth: np.ndarray, radius: float) -> dict[str, Any]:
    tp, fp, fn = detection_counts(found, truth, radius)
    return {k: round(v, 4) for k, v in detection_scores(tp, fp, fn).items()} | {
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=Path, default=Path("../shared/data/bcdata_sample"))
    parser.add_argument("--config", default="configs/psm/bcdata.yaml")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench_bcdata_sample"))
    parser.add_argument("--output", default="benchmarks/results/bcdata_sample.json")
    parser.add_argument("--radii", type=float, nargs="+", default=[6.0, 10.0])
    parser.add_argument("--override", action="append", default=[], metavar="ARG")
    args = parser.parse_args()

    from protoseg.cli import build_cli

    run_dir = fresh_run_dir(args.run_dir)
    truth = official_layout(args.sample, run_dir / "root")
    cli = build_cli(
        [*bench_overrides(args.config, run_dir, str(run_dir / "root")), *args.override],
        run=False,
    )
    _, fit_seconds = timed(cli.trainer.fit, cli.model, datamodule=cli.datamodule, label="fit")
    model = cli.model.eval()
    cli.datamodule.setup("validate")
    (batch,) = list(cli.datamodule.val_dataloader())
    with torch.no_grad():
        instances, _ = model.predict_masks(batch)
        points, classes = model.predict_cells(batch, instances)
    points, classes = points[0], classes[0]
    figures = {
        "benchmark": "bcdata_sample",
        "config": args.config,
        "labels_used_for_training": False,
        "true_points": len(truth),
        "true_points_class": "positive (all on DAB-stained cells; class not stated by the source)",
        "cells_found": len(points),
        "positive_cells_found": int((classes == POSITIVE).sum()),
        "steps": cli.trainer.global_step,
        "train_wall_seconds": fit_seconds,
        "positive": {
            f"radius_{r:g}": scores(points[classes == POSITIVE], truth, r) for r in args.radii
        },
        "points_found_any_class": {
            f"radius_{r:g}": scores(points, truth, r)["recall"] for r in args.radii
        },
    }
    path = write_result(args.output, figures)
    print(f"wrote {path}: positive cells {figures['positive']}")


if __name__ == "__main__":
    main()
