"""Online evaluation of self-supervised training: a dense linear probe run every few epochs."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from protoseg.data.records import ImageRecord
from protoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from protoseg.datamodules.monuseg import MoNuSegDataModule
from protoseg.io.errors import DataError
from protoseg.modules.linear_probe import DenseFeatures, linear_probe_dice

ProbePair = tuple[torch.Tensor, torch.Tensor]


def _center_crop(array: np.ndarray, size: int | None) -> np.ndarray:
    if size is None:
        return array
    top = max((array.shape[0] - size) // 2, 0)
    left = max((array.shape[1] - size) // 2, 0)
    return array[top : top + size, left : left + size]


def load_probe_pairs(
    root: str | Path,
    num_train_images: int = 4,
    num_val_images: int = 4,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    crop_size: int | None = None,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> tuple[list[ProbePair], list[ProbePair], list[Path]]:
    """The probe's labelled images, split as :class:`MoNuSegDataModule` splits them.

    The fitting images are the first ``num_train_images`` of the datamodule's training
    split, the held-out ones the first ``num_val_images`` of its validation split; with the
    same ``val_fraction`` and ``split_seed`` the held-out images are those the standalone
    probe (:class:`~protoseg.lightning_modules.linear_probe.LinearProbeModule`) validates on.

    Returns:
        ``train`` and ``val`` lists of (image (3, H, W) float32 normalised, mask (H, W) bool),
        and the paths of every image used.

    Raises:
        DataError: the root has no labels, or too few images for the requested split.
    """
    datamodule = MoNuSegDataModule(
        str(root),
        val_fraction=val_fraction,
        split_seed=split_seed,
        num_workers=0,
        cache_images=False,
    )
    datamodule.setup("validate")
    if not datamodule.val_records:
        raise DataError(f"{root}: no labelled images for the linear probe")
    chosen = {"train": datamodule.train_records[:num_train_images]}
    chosen["val"] = datamodule.val_records[:num_val_images]
    for name, wanted in (("train", num_train_images), ("val", num_val_images)):
        if wanted < 1 or len(chosen[name]) < wanted:
            raise DataError(
                f"{root}: the probe wants {wanted} {name} images, the split "
                f"(val_fraction={val_fraction}) has {len(chosen[name])}"
            )

    def pairs(records: list[ImageRecord]) -> list[ProbePair]:
        out = []
        for record in records:
            image, instances = datamodule.store.load(record)
            assert instances is not None  # labelled: find_records checked it
            image = _center_crop(image, crop_size)
            mask = torch.from_numpy(_center_crop(instances, crop_size) > 0)
            out.append((normalize(image, mean, std), mask))
        return out

    paths = [r.image_path for r in chosen["train"] + chosen["val"]]
    return pairs(chosen["train"]), pairs(chosen["val"]), paths


def timm_model_of(module: L.LightningModule) -> nn.Module:
    """The timm model inside a module's exported (or plain) backbone."""
    backbone = getattr(module, "export_backbone", None) or getattr(module, "backbone", None)
    if backbone is None:
        raise TypeError(f"{type(module).__name__} has no backbone to probe")
    return getattr(backbone, "model", backbone)


def training_image_paths(datamodule: L.LightningDataModule | None) -> list[Path] | None:
    """Image files a datamodule trains on, where it says (tile folders, MoNuSeg roots)."""
    if datamodule is None:
        return None
    if getattr(datamodule, "paths", None):
        return list(datamodule.paths)
    records = getattr(datamodule, "train_records", None)
    if records:
        return [record.image_path for record in records]
    return None


class LinearProbeCallback(Callback):
    """Every ``every_n_epochs`` training epochs, logs ``probe/dice`` of the encoder's features.

    The probe (:func:`~protoseg.modules.linear_probe.linear_probe_dice`) runs on rank 0 on a
    frozen deep copy of the module's backbone (the teacher for DINO), so its computation
    never reaches the SSL model's weights, gradients or BatchNorm statistics, and its
    labelled images are held here, never in the trainer's batches. By default the fit is
    refused when the SSL datamodule also trains on one of the probe's images (found through
    its ``paths`` or ``train_records``): the images would then be seen, unlabelled, by both.

    Args:
        root: MoNuSeg-layout root with labels, e.g. ``../shared/data/monuseg/train``.
        num_train_images: images the 1x1 conv is fitted on.
        num_val_images: held-out images the Dice is measured on.
        val_fraction: split of :class:`MoNuSegDataModule` the images are drawn from.
        split_seed: seed of that split.
        every_n_epochs: probe period in training epochs.
        indices: timm feature stages probed.
        stride: px per feature cell.
        steps: L-BFGS iterations of the probe.
        weight_decay: L2 penalty of the probe.
        crop_size: centre crop of the probe images, px (None: whole images); smaller is faster.
        allow_shared_images: let the SSL data contain probe images (a transductive probe).
    """

    def __init__(
        self,
        root: str,
        num_train_images: int = 4,
        num_val_images: int = 4,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        every_n_epochs: int = 1,
        indices: Sequence[int] = (1, 2, 3),
        stride: int = 8,
        steps: int = 100,
        weight_decay: float = 1e-4,
        crop_size: int | None = None,
        allow_shared_images: bool = False,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.root = Path(root)
        self.num_train_images = num_train_images
        self.num_val_images = num_val_images
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.every_n_epochs = every_n_epochs
        self.indices = tuple(indices)
        self.stride = stride
        self.steps = steps
        self.weight_decay = weight_decay
        self.crop_size = crop_size
        self.allow_shared_images = allow_shared_images
        self.train_pairs: list[ProbePair] = []
        self.val_pairs: list[ProbePair] = []
        self.probe_paths: list[Path] = []
        self.history: list[dict[str, float]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        timm_model_of(pl_module)
        if not self.train_pairs:
            self.load()
        self._check_disjoint(trainer, self.probe_paths)

    def load(self) -> None:
        """Reads the probe's images and masks (once; :meth:`setup` calls it when needed)."""
        self.train_pairs, self.val_pairs, self.probe_paths = load_probe_pairs(
            self.root,
            self.num_train_images,
            self.num_val_images,
            self.val_fraction,
            self.split_seed,
            self.crop_size,
        )

    def _check_disjoint(self, trainer: L.Trainer, probe_paths: list[Path]) -> None:
        # The datamodule's setup ran before this hook, so its image list is known.
        ssl_paths = training_image_paths(trainer.datamodule)
        if ssl_paths is None:
            rank_zero_warn("LinearProbeCallback: cannot list the SSL training images")
            return
        shared = {p.resolve() for p in ssl_paths} & {p.resolve() for p in probe_paths}
        if shared and not self.allow_shared_images:
            raise ValueError(
                f"{sorted(shared)[0]}: probe image also in the SSL training data "
                f"({len(shared)} shared); train SSL on other images or set "
                "allow_shared_images=true"
            )

    @torch.no_grad()
    def run_probe(self, pl_module: L.LightningModule) -> dict[str, float]:
        """Probes a frozen copy of ``pl_module``'s backbone; returns ``dice``, ``train_dice``."""
        model = copy.deepcopy(timm_model_of(pl_module))
        extractor = DenseFeatures(model, self.indices, self.stride).to(pl_module.device)
        start = time.perf_counter()
        scores = linear_probe_dice(
            extractor, self.train_pairs, self.val_pairs, self.steps, self.weight_decay
        )
        scores["seconds"] = time.perf_counter() - start
        return scores

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0 or trainer.sanity_checking:
            return
        if trainer.is_global_zero:
            scores = self.run_probe(pl_module)
            self.history.append({"step": trainer.global_step, **scores})
            for name, value in scores.items():
                pl_module.log(f"probe/{name}", value, rank_zero_only=True)
            rank_zero_info(
                f"protoseg: step {trainer.global_step} probe Dice {scores['dice']:.4f} "
                f"(fit {scores['train_dice']:.4f}, {scores['seconds']:.1f} s)"
            )
        trainer.strategy.barrier("linear_probe")
