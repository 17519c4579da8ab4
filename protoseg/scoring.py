"""``protoseg score``: predicted instance maps on disk against a MoNuSeg-layout root's labels.

``protoseg predict`` writes ``<stem>.png`` instance maps; this scores such a folder against the
labels of a root (``annotations_xml/`` and/or ``labels/``, read as the datamodule reads them:
``auto`` takes the Aperio XML where an image has one, else its instance PNG). It is how a
held-out set is scored once its labels exist, without loading a model, and it reports the
mean over images (the MoNuSeg convention, as ``NucleiMetrics``) overall and per label format:
XML polygons drawn with their outline cover ~6-13% more pixels than MoNuSeg's instance PNGs,
so a figure against one format is not a figure against the other.

    protoseg score --predictions OUT --root ../shared/data/monuseg/train --output scores.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from protoseg.data.records import find_records
from protoseg.data.store import ImageStore
from protoseg.io.errors import DataError
from protoseg.io.images import read_instance_png, write_text_atomic
from protoseg.io.outputs import check_output_folder
from protoseg.metrics.functional import METRIC_NAMES, nuclei_scores
from protoseg.usage import ToolParser


def _mean_scores(per_image: Sequence[dict[str, float]]) -> dict[str, float]:
    return {name: float(np.mean([s[name] for s in per_image])) for name in METRIC_NAMES}


def score_predictions(
    predictions: str | Path,
    root: str | Path,
    label_source: str = "auto",
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Scores ``<predictions>/<stem>.png`` against every labelled image of ``root``.

    Args:
        predictions: folder of instance-map PNGs named after the root's image stems.
        root: MoNuSeg-layout root (``images/`` with ``annotations_xml/`` and/or ``labels/``).
        label_source: ``auto``, ``xml`` or ``png`` (as the MoNuSeg datamodule).
        iou_threshold: PQ matching threshold.

    Returns:
        ``{"images", "mean", "by_label_format": {fmt: {"images", "mean"}}, "per_image":
        {stem: {"label_format", <scores>}}}``.

    Raises:
        DataError: no predictions folder, no labelled image, a prediction missing or
            unreadable, or its size not the image's.
    """
    predictions = Path(predictions)
    if not predictions.is_dir():
        raise DataError(f"{predictions}: predictions folder does not exist")
    records = [r for r in find_records(root, label_source) if r.label_path is not None]
    if not records:
        raise DataError(f"{root}: no labelled images (label_source={label_source!r})")
    # every prediction checked before the first is scored: a missing one fails at once
    for record in records:
        path = predictions / f"{record.stem}.png"
        if not path.is_file():
            raise DataError(f"{path}: prediction missing for {record.image_path}")
    store = ImageStore()
    per_image: dict[str, dict[str, Any]] = {}
    # the bar shows on a terminal only (disable=None), on stderr beside the printed table
    for record in tqdm(records, desc="scoring", unit="image", disable=None):
        path = predictions / f"{record.stem}.png"
        predicted = read_instance_png(path)
        image, target = store.load(record)
        shape = image.shape[:2]
        if predicted.shape != shape:
            raise DataError(f"{path}: prediction {predicted.shape} != image {shape}")
        assert target is not None
        scores = nuclei_scores(predicted, target.astype(np.int64), iou_threshold)
        per_image[record.stem] = {"label_format": record.label_format, **scores}
    by_format: dict[str, Any] = {}
    for fmt in sorted({s["label_format"] for s in per_image.values()}):
        group = [s for s in per_image.values() if s["label_format"] == fmt]
        by_format[fmt] = {"images": len(group), "mean": _mean_scores(group)}
    return {
        "images": len(per_image),
        "mean": _mean_scores(list(per_image.values())),
        "by_label_format": by_format,
        "per_image": per_image,
    }


def _table(result: dict[str, Any]) -> str:
    rows = [("all", result["images"], result["mean"])]
    rows += [(fmt, g["images"], g["mean"]) for fmt, g in result["by_label_format"].items()]
    lines = ["| labels | images | " + " | ".join(METRIC_NAMES) + " |"]
    lines.append("|---" * (len(METRIC_NAMES) + 2) + "|")
    for name, count, mean in rows:
        figures = " | ".join(f"{mean[m]:.4f}" for m in METRIC_NAMES)
        lines.append(f"| {name} | {count} | {figures} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``protoseg score --predictions DIR --root DIR [--label-source S] [--output FILE]``."""
    parser = ToolParser(
        prog="protoseg score",
        description="Score predicted instance maps (<stem>.png) against a MoNuSeg-layout root.",
    )
    parser.add_argument("--predictions", required=True, help="folder of <stem>.png maps")
    parser.add_argument("--root", required=True, help="root with images/ and labels")
    parser.add_argument("--label-source", choices=("auto", "xml", "png"), default="auto")
    parser.add_argument("--iou-threshold", type=float, default=0.5, help="PQ matching IoU")
    parser.add_argument("--output", default=None, help="JSON file of every score")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.output is not None:
        # Beside the predictions is fine (only <stem>.png files are read there); never over
        # one of them, nor into the data.
        if Path(args.output).suffix.lower() != ".json" or Path(args.output).is_dir():
            raise DataError(f"{args.output}: --output is a .json file to write")
        check_output_folder(Path(args.output).parent, [args.root], "--output's folder")
    result = score_predictions(args.predictions, args.root, args.label_source, args.iou_threshold)
    sys.stdout.write(_table(result))
    if args.output is not None:
        write_text_atomic(args.output, json.dumps(result, indent=1) + "\n")
    return 0
