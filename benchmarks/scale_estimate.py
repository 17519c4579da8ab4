"""A head trained at 40x on MoNuSeg images shrunk and enlarged: read as they are, and with the
scale read from their nuclei (``image_mpp: auto``).

The images (and instance PNGs) of ``--stems``, or of the images a seeded split holds out
(``--val-fraction``, ``--split-seed``: the held-out chain's 6), are resized by each of
``--factors`` (area filter / bilinear, labels by nearest neighbour, as a scan at another
magnification would give them) into ``--run-dir``. The head of ``--checkpoint`` predicts each
set twice: with ``--data.image_mpp=null`` (as they are) and ``--data.image_mpp=auto``, which
reads the scale from the nuclei (:func:`~protoseg.modules.scale.estimate_mpp`) and resamples
the images to the head's 0.25 µm/px unless the estimate lies within the tolerance. Both are
scored against the resized labels. The head splits with the post-processing ``--config``
ships, given on the command line over the settings its checkpoint stored when it was trained.
The JSON holds each factor's estimate too, and is rewritten after each factor (``complete``
false until the last), so a run cut short keeps the factors it finished.

    python benchmarks/scale_estimate.py --data-root ../shared/data/monuseg/train \
        --checkpoint runs/bench_psm_holdout/segment/checkpoints/last.ckpt \
        --precision 32-true --output benchmarks/results/scale_estimate.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import fresh_run_dir, shipped_postprocess, write_result  # noqa: E402
from benchmarks.resolution import MODEL_MPP, predicted, scores, shrink_root  # noqa: E402
from protoseg.datamodules.monuseg import find_records, split_stems  # noqa: E402
from protoseg.io.errors import reported  # noqa: E402
from protoseg.io.images import read_rgb  # noqa: E402
from protoseg.modules.scale import estimate_mpp  # noqa: E402


def subset_root(source: Path, stems: list[str], target: Path) -> Path:
    """A root of links to ``stems``' images and instance PNGs of ``source``."""
    for folder in ("images", "labels"):
        (target / folder).mkdir(parents=True)
    for record in find_records(source, "png"):
        if record.stem in stems:
            assert record.label_path is not None
            (target / "images" / record.image_path.name).symlink_to(record.image_path.resolve())
            (target / "labels" / record.label_path.name).symlink_to(record.label_path.resolve())
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--config", default="configs/psm/segment_monuseg.yaml")
    parser.add_argument("--factors", type=float, nargs="+", default=[0.5, 0.7, 1.0, 1.4, 2.0])
    parser.add_argument("--stems", nargs="*", default=None, help="default: the held-out images")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument(
        "--precision", default=None, help="trainer.precision of the predictions (default: config's)"
    )
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench_scale_estimate"))
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks/results/scale_estimate.json"
    )
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        parser.error(f"{args.checkpoint}: no such checkpoint")

    stems = args.stems
    if not stems:
        every = [r.stem for r in find_records(args.data_root, "png")]
        stems = split_stems(every, args.val_fraction, args.split_seed)[1]
    postprocess = shipped_postprocess(args.config)
    run_dir = fresh_run_dir(args.run_dir)
    native = subset_root(args.data_root, stems, run_dir / "native")
    figures: dict[str, Any] = {}
    for factor in args.factors:
        name = f"x{factor:g}"
        root = native if factor == 1.0 else run_dir / name / "root"
        if factor != 1.0:
            shrink_root(native, root, factor)
        records = find_records(root, "png")
        estimate = estimate_mpp(read_rgb(r.image_path) for r in records)
        row: dict[str, Any] = {
            "true_mpp": round(MODEL_MPP / factor, 4),
            "estimated_mpp": round(estimate.mpp, 4),
            "resize_factor": round(estimate.resize_factor(MODEL_MPP), 4),
        }
        modes = {"as_they_are": "null", "auto": "auto"}
        if row["resize_factor"] == 1.0:  # auto reads them as they are: the same maps
            modes = {"as_they_are": "null"}
        for mode, value in modes.items():
            output = run_dir / name / mode
            extra = [
                f"--data.image_mpp={value}",
                f"--model.init_args.postprocess={json.dumps(postprocess)}",
            ]
            if args.precision:
                extra.append(f"--trainer.precision={args.precision}")
            seconds = predicted(args, root, output, *extra)
            row[mode] = {"predict_seconds": seconds, **scores(output, root)}
        if "auto" not in row:
            row["auto"] = row["as_they_are"]
        figures[name] = row
        print(f"benchmark: {name}: {row}", flush=True)
        path = write_result(
            args.output,
            {
                "benchmark": "scale_estimate",
                "checkpoint": str(args.checkpoint),
                "config": args.config,
                "postprocess": postprocess,
                "postprocess_source": (
                    f"{args.config}'s, given on the command line over the checkpoint's own "
                    "(stored when it was trained)"
                ),
                "precision": args.precision or "the config's",
                "images": stems,
                "mpp": MODEL_MPP,
                "labels": "instance PNGs resized with the images (nearest neighbour)",
                "factors": args.factors,
                "complete": len(figures) == len(args.factors),
                **figures,
            },
        )
    print(f"benchmark: results in {path}")


if __name__ == "__main__":
    with reported():  # bad input: one line naming the file, status 2
        main()
