"""A head trained at 40x predicting 20x images: as they are, and resampled by ``image_mpp``.

Halves a MoNuSeg root's images (area filter) and instance PNGs (nearest neighbour) into
``--run-dir/root``, as a 20x scan of the same tissue would give them, then predicts them with
the head of ``--checkpoint`` twice: read as they are, and with ``--data.image_mpp`` set to
their resolution, so that the datamodule enlarges them to the head's. Both are scored against
the halved PNGs; the full-size images, predicted by the same head, against their own PNGs
give the scale of the figures.

    python benchmarks/resolution.py --data-root ../shared/data/monuseg/train \
        --checkpoint runs/bench_psm/segment/checkpoints/last.ckpt --run-dir runs/bench_resolution
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import fresh_run_dir, timed, write_result  # noqa: E402
from protoseg.cli import main as protoseg  # noqa: E402
from protoseg.data.records import find_records  # noqa: E402
from protoseg.data.store import ImageStore  # noqa: E402
from protoseg.io.images import write_png_atomic  # noqa: E402
from protoseg.scoring import score_predictions  # noqa: E402

MODEL_MPP = 0.25
"""µm/px of MoNuSeg's 40x images, which the shipped heads are trained at."""


def shrink_root(source: Path, target: Path, factor: float) -> int:
    """Writes ``source``'s images and instance PNGs resized by ``factor`` into ``target``
    (``images/``, ``labels/``); returns the number of images."""
    records = find_records(source, "png")
    store = ImageStore(factor)  # resamples as image_mpp does
    for record in records:
        image, labels = store.load(record)
        assert labels is not None  # "png": find_records checked every image has one
        write_png_atomic(target / "images" / f"{record.stem}.png", image)
        write_png_atomic(target / "labels" / f"{record.stem}.png", labels.astype(np.uint16))
    return len(records)


def predicted(args: argparse.Namespace, root: Path, output: Path, *extra: str) -> float:
    """Predicts ``root``'s images into ``output`` with the head; returns the seconds."""
    argv = [
        "predict",
        f"--config={args.config}",
        f"--ckpt_path={args.checkpoint}",
        f"--data.root={root}",
        "--data.label_source=none",
        f"--trainer.accelerator={args.accelerator}",
        "--trainer.logger=false",
        f"--output_dir={output}",
        *extra,
    ]
    _, seconds = timed(protoseg, argv, label=f"predict {output.name}")
    return seconds


def scores(output: Path, root: Path) -> dict[str, Any]:
    """Mean scores of ``output``'s maps against ``root``'s instance PNGs, 4 decimals."""
    mean = score_predictions(output, root, label_source="png")["mean"]
    return {name: round(float(value), 4) for name, value in mean.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--config", default="configs/psm/segment_monuseg.yaml")
    parser.add_argument("--factor", type=float, default=0.5, help="size of the smaller images")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench_resolution"))
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/resolution.json")
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        parser.error(f"{args.checkpoint}: no such checkpoint (run make bench-monuseg-psm first)")

    run_dir = fresh_run_dir(args.run_dir)
    small = run_dir / "root"
    count, seconds = timed(shrink_root, args.data_root, small, args.factor, label="shrink")
    image_mpp = MODEL_MPP / args.factor
    runs = {
        "full_size": (args.data_root, []),
        "smaller_as_they_are": (small, []),
        "smaller_resampled": (small, [f"--data.image_mpp={image_mpp}", f"--data.mpp={MODEL_MPP}"]),
    }
    figures: dict[str, Any] = {}
    for name, (root, extra) in runs.items():
        output = run_dir / name
        elapsed = predicted(args, root, output, *extra)
        figures[name] = {"predict_seconds": elapsed, **scores(output, root)}
        print(f"benchmark: {name}: {figures[name]}", flush=True)
    path = write_result(
        args.output,
        {
            "checkpoint": str(args.checkpoint),
            "config": args.config,
            "images": count,
            "factor": args.factor,
            "image_mpp": image_mpp,
            "mpp": MODEL_MPP,
            "shrink_seconds": seconds,
            "labels": "instance PNGs (full size: the root's; smaller: nearest-neighbour halved)",
            **figures,
        },
    )
    print(f"benchmark: results in {path}")


if __name__ == "__main__":
    main()
