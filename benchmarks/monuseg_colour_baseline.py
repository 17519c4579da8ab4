"""Colour baseline for the label-free rows: hematoxylin density, Otsu, distance split.

No network and no labels: each image's hematoxylin density (colour deconvolution, smoothed
like the PSM's colour cue) is thresholded at its own Otsu level; holes are filled, small
objects dropped and touching nuclei split by the watershed every label-free stage uses. The
true labels of the 30 training images only score it. A learned label-free stage earns its
place by beating this row.

    python benchmarks/monuseg_colour_baseline.py --data-root ../shared/data/monuseg/train \
        --output benchmarks/results/monuseg_colour_baseline.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from scipy import ndimage as ndi
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import rounded, write_result  # noqa: E402
from protoseg.data.records import find_records  # noqa: E402
from protoseg.data.store import ImageStore  # noqa: E402
from protoseg.io.errors import DataError  # noqa: E402
from protoseg.metrics import NucleiMetrics  # noqa: E402
from protoseg.modules.pseudo_masks import (  # noqa: E402
    binary_to_instances,
    clean_binary,
    hematoxylin_density,
    otsu_threshold,
    refine_outlines_locally,
)
from protoseg.summary import SUMMARY_METRICS, rows_of, summary_row  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/monuseg/train")
    parser.add_argument("--output", default="benchmarks/results/monuseg_colour_baseline.json")
    parser.add_argument("--smooth-sigma", type=float, default=1.0, help="px, as the PSM config")
    parser.add_argument("--min-area", type=int, default=30, help="px, as the label-free configs")
    parser.add_argument("--min-distance", type=int, default=5, help="px, as the label-free configs")
    parser.add_argument(
        "--refine-pad",
        type=int,
        default=None,
        help="px: redraw each object at its neighbourhood's Otsu threshold, as the label-free"
        " configs do (refine_outlines_locally); default: the whole-image threshold only",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    records = [r for r in find_records(args.data_root) if r.label_path is not None]
    if not records:
        raise DataError(
            f"{args.data_root}: no labelled images (labels/*.png or annotations_xml/*.xml);"
            " the colour baseline needs labels to score"
        )
    store, metrics = ImageStore(), NucleiMetrics(prefix="val/")
    start = time.perf_counter()
    for record in tqdm(records, desc="colour baseline", unit="image"):
        image, truth = store.load(record)
        density = ndi.gaussian_filter(hematoxylin_density(image), args.smooth_sigma)
        binary = clean_binary(density > otsu_threshold(density), args.min_area)
        if args.refine_pad is not None:
            binary = refine_outlines_locally(density, binary, args.refine_pad)
            binary = clean_binary(binary, args.min_area)
        instances = binary_to_instances(binary, args.min_distance)
        metrics.update(
            torch.from_numpy(instances)[None], torch.from_numpy(truth.astype("int64"))[None]
        )
    seconds = time.perf_counter() - start
    figures = {
        "benchmark": "monuseg_colour_baseline",
        "images": len(records),
        "labels_used_for_training": False,
        "validation_is_held_out": False,
        "method": "Otsu threshold of smoothed hematoxylin density, holes filled, distance split",
        "smooth_sigma": args.smooth_sigma,
        "min_area": args.min_area,
        "min_distance": args.min_distance,
        "refine_pad": args.refine_pad,
        "wall_seconds": round(seconds, 1),
        "validation": rounded(metrics.compute()),
    }
    name = "colour baseline: Otsu of hematoxylin density, distance split, no network"
    if args.refine_pad is not None:
        name = "colour baseline, each object redrawn at its neighbourhood's Otsu threshold"
    figures["summary"] = [
        summary_row(
            name,
            "none",
            "fit",
            rows_of(figures["validation"], SUMMARY_METRICS),
            images=len(records),
            data="/".join(Path(args.data_root).parts[-2:]),
            wall_seconds=figures["wall_seconds"],
        )
    ]
    path = write_result(args.output, figures)
    print(f"wrote {path}: {figures['validation']}")


if __name__ == "__main__":
    main()
