"""Two PSM recipes side by side on MoNuSeg training images: the authors' and ours.

The authors' code (configs/psm/monuseg_authors.yaml: res2net101_26w_4s, rotation objective,
Grad-CAM at layer1, colour-prior k-means, objects >= 200 px, holes filled) makes its masks on
the central 512 x 512 px of each image, and scores there; so does this comparison, for every
row. Rows, each split into instances by the same distance watershed (``min_distance`` 5):

- ``authors``: their network (random init, or ``--authors-checkpoint``) and their clustering;
- ``authors_rgb_only``: their clustering with the map held constant (does the map add to the
  colour?);
- ``authors_map_our_clustering``: their map as the activation cue of our clustering
  (hematoxylin + activation at weight 0.5, per-object outlines) and ``our_clustering_no_map``
  the same without it;
- ``ours``: the pseudo masks of our chain (``--ours-masks``, whole images), cut to the crop.

``activation_auc`` ranks nuclear pixels by their map (ROC AUC against the true foreground,
per image, as is and signed to agree with hematoxylin); ``hematoxylin_auc`` by the colour.
Labels only score.

    python benchmarks/psm_recipes.py --data-root ../shared/data/monuseg/train \
        --ours-masks runs/bench_psm/pseudo_masks --output benchmarks/results/psm_recipes.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import rounded, write_result  # noqa: E402
from protoseg.datamodules.monuseg import ImageStore, find_records  # noqa: E402
from protoseg.datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize  # noqa: E402
from protoseg.io.images import read_instance_png  # noqa: E402
from protoseg.metrics import NucleiMetrics  # noqa: E402
from protoseg.modules.pseudo_masks import (  # noqa: E402
    binary_to_instances,
    clean_binary,
    refine_outlines_locally,
)
from protoseg.modules.psm import (  # noqa: E402
    colour_prior_mask,
    psm_binary_mask,
    smoothed_cell_cue,
)

ROWS = (
    "authors",
    "authors_rgb_only",
    "authors_map_our_clustering",
    "our_clustering_no_map",
    "ours",
)


def central(array: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` px of an image or map (the authors' 244:756 of 1000)."""
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top : top + size, left : left + size]


def authors_model(config: str, checkpoint: str | None) -> Any:
    """The PSM module of ``config`` (random init, seeded by it), or ``checkpoint``'s."""
    from protoseg.cli import build_cli
    from protoseg.lightning_modules.psm import PSMModule

    if checkpoint is not None:
        return PSMModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    cli = build_cli(["--config", config, "--trainer.logger=false"], run=False)
    return cli.model.eval()


def our_clustering(rgb: np.ndarray, activation: np.ndarray, weight: float) -> np.ndarray:
    """configs/psm/monuseg.yaml's clustering of ``activation`` (k = 2, hematoxylin, outlines
    refined in 6 px), as a binary mask."""
    colour = smoothed_cell_cue(rgb, "hematoxylin", 1.0)
    binary = clean_binary(psm_binary_mask(colour, activation, 2, weight, seed=0), 30)
    return clean_binary(refine_outlines_locally(colour, binary, 6), 30)


def auc(score: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> float:
    sample = rng.choice(score.size, min(score.size, 50_000), replace=False)
    return float(roc_auc_score(truth.ravel()[sample], score.ravel()[sample]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/data/monuseg/train")
    parser.add_argument("--config", default="configs/psm/monuseg_authors.yaml")
    parser.add_argument("--authors-checkpoint", default=None, help="default: random init")
    parser.add_argument("--ours-masks", type=Path, required=True)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument(
        "--maps-cache", type=Path, default=None, help="keep (and reuse) the authors' maps here"
    )
    parser.add_argument("--output", default="benchmarks/results/psm_recipes.json")
    args = parser.parse_args()

    model = authors_model(args.config, args.authors_checkpoint)
    records = [r for r in find_records(args.data_root) if r.label_path is not None]
    store, rng = ImageStore(), np.random.default_rng(0)
    metrics = {row: NucleiMetrics(prefix="") for row in ROWS}
    aucs: dict[str, list[float]] = {"as_is": [], "signed": [], "hematoxylin": []}
    seconds = 0.0
    for record in tqdm(records, desc="recipes", unit="image"):
        image, truth = store.load(record)
        rgb, truth = central(image, args.crop), central(truth, args.crop).astype(np.int64)
        start = time.perf_counter()
        cached = None if args.maps_cache is None else args.maps_cache / f"{record.stem}.npy"
        if cached is not None and cached.is_file():
            activation = np.load(cached)
        else:
            tensor = normalize(rgb, IMAGENET_MEAN, IMAGENET_STD)[None]
            activation = model(tensor)[0, 0].float().numpy()
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.save(cached, activation)
        authors = clean_binary(colour_prior_mask(rgb, activation, 3, seed=0), 200)
        seconds += time.perf_counter() - start
        flat = np.full_like(activation, 0.5)
        binaries = {
            "authors": authors,
            "authors_rgb_only": clean_binary(colour_prior_mask(rgb, flat, 3, seed=0), 200),
            "authors_map_our_clustering": our_clustering(rgb, activation, 0.5),
            "our_clustering_no_map": our_clustering(rgb, activation, 0.0),
        }
        instances = {row: binary_to_instances(b, 5) for row, b in binaries.items()}
        # Our chain's own instances (whole-image masks), cut by the crop.
        ours = read_instance_png(args.ours_masks / f"{record.stem}.png")
        instances["ours"] = central(ours, args.crop)
        target = torch.from_numpy(truth)[None]
        for row, found in instances.items():
            metrics[row].update(torch.from_numpy(found.astype(np.int64))[None], target)
        nuclear = truth > 0
        hematoxylin = smoothed_cell_cue(rgb, "hematoxylin", 1.0)
        as_is = auc(activation, nuclear, rng)
        aucs["as_is"].append(as_is)
        agree = np.corrcoef(activation.ravel(), hematoxylin.ravel())[0, 1] >= 0
        aucs["signed"].append(as_is if agree else 1 - as_is)
        aucs["hematoxylin"].append(auc(hematoxylin, nuclear, rng))
    figures = {
        "benchmark": "psm_recipes",
        "images": len(records),
        "crop": args.crop,
        "authors_config": args.config,
        "authors_checkpoint": args.authors_checkpoint,
        "ours_masks": args.ours_masks.as_posix(),
        "labels_used_for_training": False,
        "authors_map_and_mask_seconds": round(seconds, 1),
        "rows": {row: rounded(m.compute(), prefix="") for row, m in metrics.items()},
        "activation_auc": {
            key: {
                "mean": round(float(np.mean(v)), 4),
                "min": round(float(np.min(v)), 4),
                "max": round(float(np.max(v)), 4),
            }
            for key, v in aucs.items()
        },
    }
    path = write_result(args.output, figures)
    for row, values in figures["rows"].items():
        print(f"{row}: {values}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
