"""Which head does the prototype chain need? Heads on LiteMedSAM's frozen encoder, trained on
the prototype pseudo masks and, as a ceiling, on true masks.

Every head here is :class:`~protoseg.modules.frozen_heads.EncoderSegNet`'s layers
(standardisation, ``kernel`` x ``kernel`` convolution with ``hidden`` channels, ReLU, 1x1
class layer) on the cached embeddings of the frozen LiteMedSAM TinyViT image encoder
(:class:`~protoseg.modules.sam_encoder.SamEncoderEmbedder`, scale 0.5, the encoder's native
cells), trained as the chain's head fit trains it (``train_view: resize``: each image's
embedding grid at 64 x 64 cells and its mask at 256 x 256 px, cross-entropy + Dice, AdamW,
cosine decay, a class drawn first when ``--balance``), then predicting each validation image
as it is (logits upsampled to the image).

- ``supervised``: the validation masks, 3 folds (``fold_stems``, seed 0: the benchmark's
  reference folds), each image predicted by the fold that did not train on it.
- ``pseudo``: the prototype pseudo masks of the 41 training patches (the benchmark run's
  chain, ``--pseudo-masks``).

Figures: the 6 tuning images (which choose) and the 25 held out
(``benchmarks/wsss4luad_prototypes.py``'s ``tuning_split``).

    python -m benchmarks.wsss4luad_prototype_heads --masks supervised pseudo --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.wsss4luad_encoder_cam import embeddings
from benchmarks.wsss4luad_prototypes import CLASSES, tuning_split
from protoseg.datamodules.wsss import (
    TissueImageStore,
    find_masked_records,
    fold_stems,
    parse_image_label,
)
from protoseg.io.class_maps import read_class_map
from protoseg.metrics.tissue import scored_confusion, tissue_scores
from protoseg.modules.frozen_heads import EncoderSegNet
from protoseg.modules.losses import CEDiceLoss
from protoseg.modules.sam_encoder import SamEncoderEmbedder
from protoseg.provenance import command_line, write_result

GRID, VIEW = 64, 256  # the fit's resized view: 256 px, 64 x 64 encoder cells


def view(tokens: torch.Tensor, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """An image's (D, h, w) embeddings and (H, W) class indices as the fit sees them."""
    grid = F.interpolate(tokens[None], size=(GRID, GRID), mode="bilinear")[0]
    mask = torch.from_numpy(target.astype(np.int64))[None, None].float()
    mask = F.interpolate(mask, size=(VIEW, VIEW), mode="nearest")[0, 0].long()
    return grid, mask


def fit(
    samples: list[tuple[torch.Tensor, torch.Tensor]],
    holding: list[list[int]] | None,
    steps: int,
    batch: int,
    hidden: int,
    kernel: int,
    lr: float,
    seed: int,
) -> EncoderSegNet:
    """EncoderSegNet's head trained on (grid, mask) samples; ``holding``: per class, the
    samples that hold it (a class drawn first), None: samples drawn evenly."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    identity = torch.nn.Identity()
    identity.dim = 256  # the embeddings come cached: the head's layers alone are used
    net = EncoderSegNet(identity, num_classes=4, hidden=hidden)
    if kernel != 3:
        net.head[1] = torch.nn.Conv2d(256, hidden, kernel, padding=kernel // 2)
    loss_fn = CEDiceLoss(dice_weight=1.0, ignore_index=255)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    net.train()
    start = time.perf_counter()
    for step in range(steps):
        if step % 50 == 0:
            print(f"  step {step} [{time.perf_counter() - start:.0f} s]", flush=True)
        if holding:
            picks = [holding[rng.integers(len(holding))] for _ in range(batch)]
            chosen = [p[rng.integers(len(p))] for p in picks]
        else:
            chosen = rng.integers(len(samples), size=batch).tolist()
        grids = torch.stack([samples[i][0] for i in chosen])
        masks = torch.stack([samples[i][1] for i in chosen])
        logits = F.interpolate(net.head(grids), size=(VIEW, VIEW), mode="bilinear")
        loss = loss_fn(logits, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return net.eval()


@torch.no_grad()
def predict(net: EncoderSegNet, tokens: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    logits = F.interpolate(net.head(tokens[None]), size=size, mode="bilinear")
    return logits[0].argmax(0).numpy().astype(np.uint8)


def score(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    names = CLASSES.names
    confusion = sum(
        scored_confusion(torch.from_numpy(p), torch.from_numpy(t.astype(np.int64)), len(names))
        for p, t in pairs
    )
    return {k: round(float(v), 4) for k, v in tissue_scores(confusion, names).items()}


def holding_of(labels: list[np.ndarray]) -> list[list[int]]:
    """Per class (that some sample holds), the samples holding it."""
    out = [[i for i, lab in enumerate(labels) if lab[c]] for c in range(len(CLASSES.names))]
    return [h for h in out if h]


def supervised_predictions(
    tokens: dict[str, torch.Tensor], truths: dict[str, np.ndarray], balance: bool, **train: Any
) -> dict[str, np.ndarray]:
    """Each validation image's map from the head (of 3 folds) that did not see its mask."""
    stems = sorted(tokens)
    predictions = {}
    for fold in range(3):
        held = fold_stems(stems, 3, fold, 0)
        fitted = [s for s in stems if s not in held]
        samples = [view(tokens[s], truths[s]) for s in fitted]
        labels = [np.bincount(truths[s].ravel(), minlength=256)[:3] > 0 for s in fitted]
        net = fit(samples, holding_of(labels) if balance else None, **train)
        for s in held:
            predictions[s] = predict(net, tokens[s], truths[s].shape)
    return predictions


def pseudo_predictions(
    tokens: dict[str, torch.Tensor],
    truths: dict[str, np.ndarray],
    embedder: SamEncoderEmbedder,
    training: Path,
    pseudo_masks: Path,
    balance: bool,
    **train: Any,
) -> dict[str, np.ndarray]:
    """Every validation image's map from the head trained on the training patches' pseudo
    masks (a class drawn first by the patches' image-level labels when ``balance``)."""
    paths = sorted(training.glob("*.png"))
    train_tokens = embeddings(embedder, paths)
    samples = [view(train_tokens[p], read_class_map(pseudo_masks / p.name, CLASSES)) for p in paths]
    labels = [np.array(parse_image_label(p, 3)) > 0 for p in paths]
    net = fit(samples, holding_of(labels) if balance else None, **train)
    return {s: predict(net, tokens[s], truths[s].shape) for s in sorted(tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/data/wsss4luad")
    parser.add_argument("--cache-dir", default="runs/sam_embeddings", help="embeddings' cache")
    parser.add_argument(
        "--pseudo-masks", default="runs/bench_wsss4luad_prototypes/chain/pseudo_masks"
    )
    parser.add_argument("--masks", nargs="+", default=["supervised", "pseudo"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--even", action="store_true", help="images drawn evenly")
    parser.add_argument(
        "--output",
        default="benchmarks/results/wsss4luad_prototype_heads.json",
        help="results file; this run's record replaces one of the same settings",
    )
    args = parser.parse_args()
    data = Path(args.data_root)
    val_root = data / "validation"
    tuning = tuning_split(val_root / "mask")
    embedder = SamEncoderEmbedder(scale=0.5, cache_dir=args.cache_dir, grid="native")
    records = {r.stem: r for r in find_masked_records(val_root)}
    stems = sorted(records)
    held_out = [s for s in stems if s not in tuning]
    store = TissueImageStore(CLASSES)
    truths = {s: store.load(records[s])[1] for s in stems}
    paths = embeddings(embedder, [records[s].image_path for s in stems])
    tokens = {s: paths[records[s].image_path] for s in stems}
    train = {"steps": args.steps, "batch": args.batch, "hidden": args.hidden}
    train |= {"kernel": args.kernel, "lr": args.lr, "balance": not args.even}
    figures: dict[str, Any] = {}
    for what in args.masks:
        for seed in args.seeds:
            start = time.perf_counter()
            if what == "supervised":
                predictions = supervised_predictions(tokens, truths, seed=seed, **train)
            else:
                predictions = pseudo_predictions(
                    tokens,
                    truths,
                    embedder,
                    data / "training",
                    Path(args.pseudo_masks),
                    seed=seed,
                    **train,
                )
            result = {
                "tuning": score([(predictions[s], truths[s]) for s in tuning]),
                "held_out": score([(predictions[s], truths[s]) for s in held_out]),
                "seconds": round(time.perf_counter() - start, 1),
            }
            figures[f"{what}_seed{seed}"] = result
            t, h = result["tuning"], result["held_out"]
            print(
                f"{what} seed {seed}: tuning mIoU {t['miou']} (normal {t['iou_normal']}), "
                f"held out mIoU {h['miou']} (tumor {h['iou_tumor']}, stroma "
                f"{h['iou_stroma']}, normal {h['iou_normal']}, FwIoU {h['fwiou']}) "
                f"[{result['seconds']} s]",
                flush=True,
            )
    output = Path(args.output)
    runs = json.loads(output.read_text())["runs"] if output.is_file() else []
    record = {"command": command_line(), "settings": train, "figures": figures}
    runs = [r for r in runs if r["settings"] != train] + [record]
    write_result(output, {"tuning_images": tuning, "held_out_images": held_out, "runs": runs})


if __name__ == "__main__":
    main()
