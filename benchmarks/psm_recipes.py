"""Two PSM recipes side by side on MoNuSeg training images: the authors' and ours.

The authors' code (configs/psm/monuseg_authors.yaml: res2net101_26w_4s, rotation objective,
Grad-CAM at layer1, colour-prior k-means, objects >= 200 px, holes filled) makes its masks on
the central 512 x 512 px of each image, and scores there; so does this comparison, for every
row. Rows (:data:`ROWS`), each split into instances by the same distance watershed
(``min_distance`` 5) but ``ours``, which are our chain's own instance maps. Labels only score.

``activation_auc`` ranks nuclear pixels by the authors' map (ROC AUC against the true
foreground, per image, as is and signed to agree with hematoxylin); ``hematoxylin`` by the
colour. ``paired`` compares two rows image by image (mean AJI difference, images won).

The authors' network comes from one of three places: ``--fit-steps N`` trains it here first
(``bench_overrides`` into ``--run-dir``, timed), ``--authors-checkpoint`` reads a trained one
(its steps from the checkpoint; ``--fit-seconds`` / ``--fit-precision`` say how the caller's
fit ran), neither: random init (the config's seed).

    make bench-psm-recipes   # after make bench-monuseg-psm; the command it runs:
    python benchmarks/psm_recipes.py --data-root ../shared/data/monuseg/train \\
        --fit-steps 80 --run-dir runs/bench_psm_recipes --ours-masks runs/bench_psm/pseudo_masks \\
        --output benchmarks/results/monuseg_psm_recipes.json \\
        -- --data.crop_size=128 --model.augment.init_args.size=128
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import bench_overrides, fresh_run_dir, write_result  # noqa: E402
from protoseg.data.records import find_records  # noqa: E402
from protoseg.data.store import ImageStore  # noqa: E402
from protoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize  # noqa: E402
from protoseg.io.errors import DataError  # noqa: E402
from protoseg.io.images import read_instance_png  # noqa: E402
from protoseg.metrics.functional import nuclei_scores  # noqa: E402
from protoseg.modules.pseudo_masks import (  # noqa: E402
    binary_to_instances,
    clean_binary,
    hematoxylin_density,
    otsu_threshold,
    refine_outlines_locally,
)
from protoseg.modules.psm import (  # noqa: E402
    colour_prior_mask,
    psm_binary_mask,
    smoothed_cell_cue,
)

ROWS: dict[str, str] = {
    "authors": "their recipe: k-means (k = 3) of jet(map) + RGB, darkest cluster, >= 200 px",
    "authors_rgb_only": "their clustering with the map held constant: k-means of RGB alone",
    "authors_map_our_clustering": "our k-means (hematoxylin + their map at weight 0.5, k = 2),"
    " outlines redrawn per object (pad 6)",
    "our_clustering_no_map": "the same k-means without the map (weight 0): hematoxylin alone",
    "hematoxylin_otsu": "Otsu of smoothed hematoxylin density, no network",
    "hematoxylin_otsu_refined": "the same, each object redrawn at its neighbourhood's Otsu"
    " (pad 6): make bench-monuseg-colour's refined row",
    "ours": "our chain's PSM pseudo masks (--ours-masks, whole images), cut to the crop",
}
"""Row name -> what it is."""

PAIRS: tuple[tuple[str, str], ...] = (
    ("authors", "authors_rgb_only"),
    ("authors_map_our_clustering", "our_clustering_no_map"),
    ("authors", "ours"),
    ("ours", "hematoxylin_otsu_refined"),
    ("our_clustering_no_map", "hematoxylin_otsu_refined"),
)
"""Rows compared image by image: does the first add anything over the second?"""


def central(array: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` px of an image or map (the authors' 244:756 of 1000)."""
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top : top + size, left : left + size]


def our_clustering(rgb: np.ndarray, activation: np.ndarray, weight: float) -> np.ndarray:
    """configs/psm/monuseg.yaml's clustering of ``activation`` (k = 2, hematoxylin, outlines
    refined in 6 px), as a binary mask (H, W)."""
    colour = smoothed_cell_cue(rgb, "hematoxylin", 1.0)
    binary = clean_binary(psm_binary_mask(colour, activation, 2, weight, seed=0), 30)
    return clean_binary(refine_outlines_locally(colour, binary, 6), 30)


def hematoxylin_otsu(rgb: np.ndarray, refine_pad: int | None) -> np.ndarray:
    """benchmarks/monuseg_colour_baseline.py's mask (H, W): no network, no clustering."""
    density = ndi.gaussian_filter(hematoxylin_density(rgb), 1.0)
    binary = clean_binary(density > otsu_threshold(density), 30)
    if refine_pad is not None:
        binary = clean_binary(refine_outlines_locally(density, binary, refine_pad), 30)
    return binary


def recipe_instances(
    rgb: np.ndarray, activation: np.ndarray, ours: np.ndarray
) -> dict[str, np.ndarray]:
    """Instance maps (H, W) of every row of :data:`ROWS` for one crop.

    Args:
        rgb: (H, W, 3) uint8 crop.
        activation: (H, W) the authors' map of the crop, in [0, 1].
        ours: (H, W) our chain's instance map of the same crop.
    """
    flat = np.full_like(activation, 0.5)
    binaries = {
        "authors": clean_binary(colour_prior_mask(rgb, activation, 3, seed=0), 200),
        "authors_rgb_only": clean_binary(colour_prior_mask(rgb, flat, 3, seed=0), 200),
        "authors_map_our_clustering": our_clustering(rgb, activation, 0.5),
        "our_clustering_no_map": our_clustering(rgb, activation, 0.0),
        "hematoxylin_otsu": hematoxylin_otsu(rgb, None),
        "hematoxylin_otsu_refined": hematoxylin_otsu(rgb, 6),
    }
    instances = {row: binary_to_instances(b, 5) for row, b in binaries.items()}
    instances["ours"] = ours
    return instances


def paired(per_image: dict[str, list[dict[str, float]]], first: str, second: str) -> dict:
    """AJI of row ``first`` against row ``second``, image by image."""
    a = np.array([s["aji"] for s in per_image[first]])
    b = np.array([s["aji"] for s in per_image[second]])
    return {
        "rows": [first, second],
        "mean_aji_difference": round(float(np.mean(a - b)), 4),
        "images_first_better": int(np.sum(a > b)),
        "images": len(a),
    }


def auc(score: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> float:
    sample = rng.choice(score.size, min(score.size, 50_000), replace=False)
    return float(roc_auc_score(truth.ravel()[sample], score.ravel()[sample]))


def summary(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(float(np.mean(values)), 4),
        "min": round(float(np.min(values)), 4),
        "max": round(float(np.max(values)), 4),
    }


def authors_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The authors' PSM module (eval mode) and how it was trained (``fit``)."""
    from protoseg.cli import build_cli
    from protoseg.lightning_modules.psm import PSMModule

    if args.authors_checkpoint is not None:
        path = Path(args.authors_checkpoint)
        if not path.is_file():
            raise DataError(f"{path}: --authors-checkpoint is not a file")
        steps = torch.load(path, map_location="cpu", weights_only=False)["global_step"]
        model = PSMModule.load_from_checkpoint(path, map_location="cpu")
        fit = {
            "checkpoint": path.as_posix(),
            "steps": int(steps),
            "precision": args.fit_precision,
            "wall_seconds": args.fit_seconds,
            "timed_by": "the caller (--fit-seconds)",
        }
        return model.eval(), fit
    if args.fit_steps is None:
        overrides = [f"--config={args.config}", "--trainer.logger=false"]
    else:
        run_dir = fresh_run_dir(args.run_dir)
        overrides = [
            *bench_overrides(args.config, run_dir, args.data_root),
            f"--trainer.max_steps={args.fit_steps}",
        ]
    cli = build_cli([*overrides, *args.extra], run=False)
    if args.fit_steps is None:
        return cli.model.eval(), {"checkpoint": None, "steps": 0, "note": "random init"}
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit = {
        "checkpoint": Path(cli.trainer.checkpoint_callback.last_model_path).as_posix(),
        "steps": cli.trainer.global_step,
        "precision": str(cli.trainer.precision),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "timed_by": "this benchmark",
    }
    return cli.model.eval(), fit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/data/monuseg/train")
    parser.add_argument("--config", default="configs/psm/monuseg_authors.yaml")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--authors-checkpoint", default=None, help="a trained authors' net")
    source.add_argument("--fit-steps", type=int, default=None, help="train it here first")
    parser.add_argument("--run-dir", default="runs/bench_psm_recipes", help="for --fit-steps")
    parser.add_argument("--fit-seconds", type=float, default=None, help="of --authors-checkpoint")
    parser.add_argument("--fit-precision", default=None, help="of --authors-checkpoint")
    parser.add_argument("--ours-masks", type=Path, required=True)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument(
        "--maps-cache", type=Path, default=None, help="keep (and reuse) the authors' maps here"
    )
    parser.add_argument("--output", default="benchmarks/results/monuseg_psm_recipes.json")
    parser.add_argument("extra", nargs="*", help="further CLI overrides of the authors' config")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    records = [r for r in find_records(args.data_root) if r.label_path is not None]
    if not records:
        raise DataError(f"{args.data_root}: no labelled images; the comparison needs labels")
    missing = [r.stem for r in records if not (args.ours_masks / f"{r.stem}.png").is_file()]
    if missing:
        raise DataError(f"{args.ours_masks}: no pseudo mask for {', '.join(missing[:3])}")
    start_all = time.perf_counter()
    model, fit = authors_model(args)
    store, rng = ImageStore(), np.random.default_rng(0)
    per_image: dict[str, list[dict[str, float]]] = {row: [] for row in ROWS}
    aucs: dict[str, list[float]] = {"as_is": [], "signed": [], "hematoxylin": []}
    map_seconds = 0.0
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
        map_seconds += time.perf_counter() - start
        ours = central(read_instance_png(args.ours_masks / f"{record.stem}.png"), args.crop)
        for row, found in recipe_instances(rgb, activation, ours).items():
            per_image[row].append(nuclei_scores(found.astype(np.int64), truth))
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
        "authors_overrides": args.extra,
        "authors_fit": fit,
        "ours_masks": args.ours_masks.as_posix(),
        "labels_used_for_training": False,
        "authors_map_seconds": round(map_seconds, 1),
        "wall_seconds": round(time.perf_counter() - start_all, 1),
        "row_descriptions": ROWS,
        "rows": {
            row: {k: round(float(np.mean([s[k] for s in scores])), 4) for k in scores[0]}
            for row, scores in per_image.items()
        },
        "paired": [paired(per_image, first, second) for first, second in PAIRS],
        "activation_auc": {key: summary(values) for key, values in aucs.items()},
        "per_image_aji": {
            "images": [r.stem for r in records],
            **{row: [round(s["aji"], 4) for s in scores] for row, scores in per_image.items()},
        },
    }
    path = write_result(args.output, figures)
    for row, values in figures["rows"].items():
        print(f"{row}: {values}")
    for pair in figures["paired"]:
        print(f"paired {pair}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
