"""``protoseg score-tissue``: score a folder of tissue class maps against a split's masks.

The WSSS convention (:mod:`protoseg.metrics.tissue`): one confusion matrix over every scored
image, background pixels left out, unsure (255) predictions counted as misses.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protoseg.datamodules.wsss import TissueImageStore, find_masked_records
from protoseg.io.class_maps import TissueClasses, read_class_map
from protoseg.io.errors import DataError
from protoseg.io.images import write_text_atomic
from protoseg.io.outputs import check_output_file
from protoseg.metrics.tissue import scored_confusion, tissue_scores
from protoseg.usage import ToolParser


def score_class_maps(
    predictions: str | Path,
    root: str | Path,
    classes: TissueClasses,
    stems: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Whole-set scores of ``<predictions>/<stem>.png`` (class codes) against the masks of a
    split (``img/``, ``mask/``, optional ``background-mask/``).

    Args:
        predictions: folder of predicted class-code PNGs, the images' size.
        root: the split.
        classes: the dataset's classes and codes.
        stems: the images scored; None: every image of the split.

    Returns:
        ``images`` (count), ``stems`` and the :func:`tissue_scores` figures, rounded to 4
        decimals.

    Raises:
        DataError: a missing prediction, mask or image, or a prediction of another size.
    """
    if not Path(predictions).is_dir():
        raise DataError(f"{predictions}: predictions folder does not exist")
    records = {r.stem: r for r in find_masked_records(Path(root))}
    chosen = sorted(records) if stems is None else list(stems)
    store = TissueImageStore(classes)
    confusion = torch.zeros(classes.num_classes + 1, classes.num_classes + 1, dtype=torch.long)
    for stem in chosen:
        record = records.get(stem)
        if record is None or record.mask_path is None:
            raise DataError(f"{root}: no image with a mask named {stem}")
        _, truth = store.load(record)
        assert truth is not None
        path = Path(predictions) / f"{stem}.png"
        if not path.is_file():
            raise DataError(f"{path}: prediction missing (image {record.image_path})")
        pred = read_class_map(path, classes, truth.shape)
        confusion += scored_confusion(
            torch.from_numpy(pred), torch.from_numpy(truth), classes.num_classes
        )
    scores = tissue_scores(confusion.numpy(), classes.names)
    rounded = {k: round(v, 4) if np.isfinite(v) else None for k, v in scores.items()}
    return {"images": len(chosen), "stems": chosen, **rounded}


def main(argv: Sequence[str] | None = None) -> int:
    """``protoseg score-tissue --predictions DIR --root SPLIT [--images STEM ...]``."""
    parser = ToolParser(
        prog="protoseg score-tissue",
        description="Score predicted tissue class maps (<stem>.png of class codes) against "
        "the masks of a split (img/, mask/): per-class IoU, mIoU, FwIoU, pixel accuracy.",
    )
    parser.add_argument("--predictions", required=True, help="folder of <stem>.png class maps")
    parser.add_argument("--root", required=True, help="split with img/ and mask/")
    parser.add_argument("--images", nargs="*", default=None, help="stems scored (default all)")
    parser.add_argument("--class-names", nargs="+", default=["tumor", "stroma", "normal"])
    parser.add_argument("--background-code", type=int, default=3, help="-1: no background")
    parser.add_argument("--output", default=None, help="JSON file of the figures")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    background = None if args.background_code < 0 else args.background_code
    try:
        classes = TissueClasses(tuple(args.class_names), background_code=background)
    except ValueError as error:
        parser.error(f"--class-names / --background-code: {error}")
    if args.output is not None:
        check_output_file(args.output, [args.predictions, args.root], "--output")
    result = score_class_maps(args.predictions, args.root, classes, args.images)
    keys = [f"iou_{n}" for n in classes.names] + ["miou", "fwiou", "pixel_accuracy", "coverage"]
    print("| images | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    print(f"| {result['images']} | " + " | ".join(str(result[k]) for k in keys) + " |")
    if args.output is not None:
        write_text_atomic(args.output, json.dumps(result, indent=1) + "\n")
    return 0
