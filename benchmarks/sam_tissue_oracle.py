"""How well can Segment Anything draw tissue classes at all? SAM prompted with the *true*
regions of each class.

For each validation image, each connected region (>= ``--min-region`` px) of each class's true
mask becomes a box prompt, tile by tile as the CAM + SAM pseudo masks prompt it; every SAM
mask is painted with its class (a later class over an earlier one where they overlap) and
the painted map is scored against the truth with the WSSS convention. Pixels no mask covers
count as wrong (the score's ``coverage``). An upper bound for box-prompted SAM pseudo masks:
prompts from CAMs can only be worse than prompts from the truth. The masks score here; they
train nothing.

    python -m benchmarks.sam_tissue_oracle --images 00 01 ... --output results.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import write_result
from protoseg.io.images import read_code_png, read_rgb
from protoseg.metrics.tissue import scored_confusion, tissue_scores
from protoseg.modules.cam_sam import region_boxes
from protoseg.modules.sam import SamPredictor, load_sam, tile_windows

CLASSES = ("tumor", "stroma", "normal")
UNCOVERED = 255


def oracle_map(
    predictor: SamPredictor, image: np.ndarray, truth: np.ndarray, tile: int, min_region: int
) -> np.ndarray:
    """(H, W) class indices painted by SAM masks of the true class regions; 255 uncovered."""
    painted = np.full(truth.shape, UNCOVERED, np.uint8)
    for y, x in tile_windows(*truth.shape, tile, min(32, tile - 1)):
        window = (slice(y, y + tile), slice(x, x + tile))
        encoded = False
        for k in range(len(CLASSES)):
            boxes, _ = region_boxes(truth[window] == k, min_region)
            if len(boxes) == 0:
                continue
            if not encoded:
                predictor.set_image(np.ascontiguousarray(image[window]))
                encoded = True
            probs, _ = predictor.predict(boxes=boxes)
            for mask in probs > 0.5:
                painted[window][mask] = k
    return painted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validation", default="../shared/data/wsss4luad/validation")
    parser.add_argument("--images", nargs="*", default=None, help="stems (default: all)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--min-region", type=int, default=64)
    parser.add_argument("--output", default="benchmarks/results/wsss4luad_sam_oracle.json")
    args = parser.parse_args(argv)
    folder = Path(args.validation)
    stems = args.images or sorted(p.stem for p in (folder / "img").glob("*.png"))
    predictor = SamPredictor(load_sam())
    confusion = torch.zeros(len(CLASSES) + 1, len(CLASSES) + 1, dtype=torch.long)
    start = time.perf_counter()
    for stem in stems:
        image = read_rgb(folder / "img" / f"{stem}.png")
        truth = read_code_png(folder / "mask" / f"{stem}.png")
        painted = oracle_map(predictor, image, truth, args.tile, args.min_region)
        confusion += scored_confusion(torch.from_numpy(painted), torch.from_numpy(truth), 3)
        print(f"{stem}: {time.perf_counter() - start:.0f} s", flush=True)
    scores = {k: round(v, 4) for k, v in tissue_scores(confusion.numpy(), CLASSES).items()}
    print(scores)
    write_result(
        args.output,
        {
            "what": "LiteMedSAM masks from box prompts of the true class regions (an upper "
            "bound for box-prompted SAM pseudo masks), scored on WSSS4LUAD validation images",
            "images": stems,
            "tile": args.tile,
            "min_region": args.min_region,
            "scores": scores,
            "wall_seconds": round(time.perf_counter() - start, 1),
        },
    )


if __name__ == "__main__":
    main()
