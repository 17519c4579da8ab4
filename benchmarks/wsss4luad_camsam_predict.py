"""How the CAM + SAM chain should predict a new image (no label): measured on WSSS4LUAD.

The chain's pseudo masks use each image's image-level label; a new image has none. This study
scores the label-free ways of predicting the validation images from a trained chain's parts:

- ``cam_given``: the classifier's CAM pseudo masks with the true image-level labels (the
  classes of each mask: the upper bound of the CAM path, not label-free);
- ``cam_predicted@T``: the same CAMs gated by the classifier's PREDICTED image-level labels
  (class probability > T, and its most probable class), for each T of ``--thresholds``;
- ``cam_predicted@training``: the same with per-class thresholds calibrated on the 41
  training images (``label_threshold: training``,
  :func:`~protoseg.modules.image_labels.midpoint_logits` of their whole-image logits);
- ``head:<name>``: a semantic head's own prediction (each ``--head NAME=CKPT``);
- ``head:<name> gated@T``: that head's logits with the classes the classifier does not
  predict (at T) removed (the background kept).

For each rotation count of ``--rotations`` (EPLC-SAM's test-time averaging of the CAMs over
90-degree turns; each turn is one more pass of the frozen encoder, cached) the CAM variants are
scored again. Every figure is given on the tuning fold (10 validation images; ``T`` and the
rotations are chosen there), the report fold (the other 21) and all 31.

    python -m benchmarks.wsss4luad_camsam_predict \\
        --classifier runs/bench_wsss4luad_camsam/classifier/checkpoints/last.ckpt \\
        --head cam_sam=runs/bench_wsss4luad_camsam/cam_sam/head/checkpoints/last.ckpt
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

from benchmarks.common import write_result
from benchmarks.wsss4luad_camsam import TUNE
from protoseg.datamodules.wsss import WSSSDataModule
from protoseg.lightning_modules.cam_sam import load_classifier
from protoseg.lightning_modules.evaluation import batch_rgb
from protoseg.lightning_modules.semantic import SemanticSegmentationModule
from protoseg.metrics.tissue import scored_confusion, tissue_scores
from protoseg.modules.cam import bright_background
from protoseg.modules.cam_sam import cam_class_map
from protoseg.modules.image_labels import midpoint_logits

CLASSES = ("tumor", "stroma", "normal")
PALETTE = [[0, 64, 128], [64, 128, 0], [243, 152, 0], [255, 255, 255]]
FOLDS = {"tuning": lambda s: s in TUNE, "report": lambda s: s not in TUNE, "all_31": bool}


def load_head(path: str) -> SemanticSegmentationModule:
    return SemanticSegmentationModule.load_from_checkpoint(
        path, map_location="cpu", weights_only=True
    ).eval()


def crop_probabilities(classifier: Any, image: torch.Tensor) -> np.ndarray:
    """(K,) the highest class probability of any training-sized crop of the image: the class
    layer's maps pooled by its log-sum-exp over each ``crop_cells`` window (stride a quarter
    window), as training pooled one random crop."""
    net = classifier.net
    maps = net(image)[1].float()
    size = min(net.crop_cells or maps.shape[-1], *maps.shape[-2:])
    pooled = F.avg_pool2d(torch.exp(net.lse_r * maps), size, stride=max(1, size // 4))
    logits = torch.log(pooled).amax(dim=(2, 3)) / net.lse_r
    return logits.sigmoid()[0].numpy()


def gate(probs: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """(K,) bool predicted classes: probability above ``threshold`` (one, or per class), and
    the most probable."""
    return (probs > threshold) | (probs == probs.max())


def training_calibration(classifier: Any, data: WSSSDataModule) -> np.ndarray:
    """(K,) per-class probability thresholds of ``label_threshold: training`` for this
    classifier: the midpoints of its whole-image logits on the training images."""
    logits, labels = [], []
    for item in data.training_images():
        logits.append(classifier.net(item["image"][None])[0][0].float())
        labels.append(item["labels"] > 0.5)
    return midpoint_logits(torch.stack(logits), torch.stack(labels)).sigmoid().numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/wsss4luad")
    parser.add_argument("--classifier", required=True, help="CAMClassifierModule checkpoint")
    parser.add_argument("--head", action="append", default=[], metavar="NAME=CKPT")
    parser.add_argument(
        "--thresholds", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    )
    parser.add_argument("--rotations", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--rotation-fold",
        choices=list(FOLDS),
        default="all_31",
        help="images whose CAMs are turned (rotations > 1): each turn is an encoder pass",
    )
    parser.add_argument("--output", default="benchmarks/results/wsss4luad_camsam_predict.json")
    args = parser.parse_args(argv)

    torch.set_grad_enabled(False)
    classifier = load_classifier(args.classifier)
    heads = {}
    for item in args.head:
        name, _, path = item.partition("=")
        heads[name] = load_head(path)
    data = WSSSDataModule(
        args.data_root, list(CLASSES), background_code=3, palette=PALETTE, num_workers=0
    )
    data.setup("validate")
    calibrated = training_calibration(classifier, data)
    print(f"thresholds calibrated on the training images: {np.round(calibrated, 4).tolist()}")
    brightness = classifier.hparams.background_brightness
    norm = classifier.hparams.normalization

    confusion: dict[str, dict[str, torch.Tensor]] = {}
    seconds: dict[str, float] = {}

    def add(method: str, stem: str, pred: np.ndarray | torch.Tensor, mask: torch.Tensor) -> None:
        counts = scored_confusion(torch.as_tensor(pred), mask, len(CLASSES))
        for fold, member in FOLDS.items():
            if member(stem):
                table = confusion.setdefault(method, {})
                table[fold] = table.get(fold, 0) + counts

    probabilities = {}
    for batch in data.val_dataloader():
        stem, image, mask = batch["stem"][0], batch["image"], batch["mask"][0]
        truth = batch["labels"][0].numpy() > 0.5
        rgb = batch_rgb({"image": image}, norm)[0]
        background = bright_background(rgb, brightness)
        probs = classifier.net(image)[0].sigmoid()[0].float().numpy()
        crop_probs = crop_probabilities(classifier, image)
        probabilities[stem] = {
            "probabilities": probs.round(4).tolist(),
            "crop_probabilities": crop_probs.round(4).tolist(),
            "labels": truth.tolist(),
        }
        for turns in args.rotations:
            if turns > 1 and not FOLDS[args.rotation_fold](stem):
                continue
            start = time.perf_counter()
            cams = classifier.cams(image, turns)[0].float().numpy()
            seconds[f"cams x{turns}"] = seconds.get(f"cams x{turns}", 0.0) + (
                time.perf_counter() - start
            )
            add(f"cam_given x{turns}", stem, cam_class_map(cams, truth, background, 0.0), mask)
            pred = cam_class_map(cams, gate(probs, calibrated), background, 0.0)
            add(f"cam_predicted@training x{turns}", stem, pred, mask)
            for t in args.thresholds:
                present = gate(probs, t)
                pred = cam_class_map(cams, present, background, 0.0)
                add(f"cam_predicted@{t:g} x{turns}", stem, pred, mask)
                present = gate(crop_probs, t)
                pred = cam_class_map(cams, present, background, 0.0)
                add(f"cam_crop_predicted@{t:g} x{turns}", stem, pred, mask)
        for name, head in heads.items():
            logits = head(image)[0]
            add(f"head:{name}", stem, logits.argmax(0), mask)
            for t in args.thresholds:
                present = gate(probs, t)
                gated = logits.clone()
                gated[: len(CLASSES)][~torch.from_numpy(present)] = -torch.inf
                add(f"head:{name} gated@{t:g}", stem, gated.argmax(0), mask)
        print(
            f"{stem}: probs {np.round(probs, 2).tolist()} crops {np.round(crop_probs, 2).tolist()} "
            f"labels {truth.astype(int).tolist()}"
        )

    scores = {
        method: {fold: tissue_scores(c, CLASSES) for fold, c in folds.items()}
        for method, folds in confusion.items()
    }
    scores = {
        m: {f: {k: round(float(v), 4) for k, v in s.items()} for f, s in folds.items()}
        for m, folds in scores.items()
    }
    print(f"{'method':40s} tuning  report  all_31")
    for method, folds in scores.items():
        row = [folds.get(f, {}).get("miou", float("nan")) for f in FOLDS]
        print(f"{method:40s} " + "  ".join(f"{v:.4f}" for v in row))

    def best(prefix: str, suffix: str = "") -> str:
        names = [m for m in scores if m.startswith(prefix) and m.endswith(suffix)]
        return max(names, key=lambda m: scores[m]["tuning"]["miou"])

    chosen = {
        f"{kind} x{turns}": best(f"{kind}@", f" x{turns}")
        for kind in ("cam_predicted", "cam_crop_predicted")
        for turns in args.rotations
    }
    chosen.update({f"head:{name} gated": best(f"head:{name} gated@") for name in heads})
    print("chosen on the tuning fold:", json.dumps(chosen))
    figures: dict[str, Any] = {
        "classifier": str(Path(args.classifier).resolve()),
        "heads": {
            name: str(Path(p.partition("=")[2]).resolve())
            for name, p in zip(heads, args.head, strict=True)
        },
        "folds": {"tuning": list(TUNE), "report": "the other 21", "all_31": "every image"},
        "rotation_fold": args.rotation_fold,
        "chosen_on_tuning_fold": chosen,
        "training_calibrated_thresholds": np.round(calibrated, 4).tolist(),
        "scores": scores,
        "cam_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "validation_image_probabilities": probabilities,
    }
    print(f"wrote {write_result(args.output, figures)}")


if __name__ == "__main__":
    main()
