"""Random crops from any folder tree of images: unlabelled data for self-supervised stages."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from protoseg.data.samplers import epoch_seed_sampler
from protoseg.data.transforms import PAD_FILL
from protoseg.io.errors import DataError
from protoseg.io.images import read_rgb

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def find_images(root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files anywhere under ``root`` (case-insensitive suffix, hidden files skipped), sorted.

    Raises:
        DataError: ``root`` is not a folder or holds no such file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder does not exist")
    suffixes = {ext.lower() for ext in extensions}
    paths = sorted(
        path
        for path in root.rglob("*")
        if path.suffix.lower() in suffixes
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
    if not paths:
        raise DataError(f"{root}: no images ({', '.join(sorted(suffixes))}) in the folder tree")
    return paths


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, 3) crop at a random position; sides shorter than ``size`` are padded white."""
    pad_h, pad_w = max(size - image.shape[0], 0), max(size - image.shape[1], 0)
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=PAD_FILL)
    top = int(rng.integers(image.shape[0] - size + 1))
    left = int(rng.integers(image.shape[1] - size + 1))
    return image[top : top + size, left : left + size]


class TileCropDataset(Dataset):
    """Item ``seed`` -> ``{"image": (3, size, size) float32 in [0, 1]}``, a crop of a random image.

    Images are drawn uniformly (not by area). Feed it seeds from :class:`EpochSeedSampler`.
    """

    def __init__(self, images: list[np.ndarray], crop_size: int, crops: int) -> None:
        self.images = images
        self.crop_size = crop_size
        self.crops = crops

    def __len__(self) -> int:
        return self.crops

    def __getitem__(self, seed: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(seed)
        image = self.images[int(rng.integers(len(self.images)))]
        crop = random_crop(image, self.crop_size, rng)
        tensor = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))
        return {"image": tensor.float().div_(255.0)}


class TileFolderDataModule(L.LightningDataModule):
    """Unlabelled random crops from every image under ``root`` (training only, no validation).

    Batches: ``{"image": (B, 3, crop, crop) float32 RGB in [0, 1]}``, not normalised: the
    self-supervised modules augment and normalise on the device. Images are decoded once, in
    :meth:`setup`, and held in memory (DataLoader workers share them). Crops depend only on
    ``torch.initial_seed()`` (set by ``seed_everything``), the epoch and the position in it.
    The last incomplete batch is dropped (BatchNorm heads need equal, > 1 batches).

    Args:
        root: folder searched recursively, e.g. ``../shared/data/monuseg/train/images``.
        crop_size: side of the square crops, px.
        crops_per_epoch: crops per epoch, shared among DDP processes (at least ``batch_size``).
        batch_size: crops per batch and process.
        num_workers: DataLoader processes (kept alive between epochs when > 0).
        extensions: file suffixes read as images (case-insensitive).
        min_side: skip images whose shorter side is below this, px (e.g. thumbnails). An
            image kept that is smaller than a crop stops the run (its crops would be mostly
            padding).
    """

    def __init__(
        self,
        root: str,
        crop_size: int = 224,
        crops_per_epoch: int = 1024,
        batch_size: int = 32,
        num_workers: int = 2,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
        min_side: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in [("crop_size", crop_size), ("batch_size", batch_size)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if crops_per_epoch < batch_size:
            raise ValueError(
                f"crops_per_epoch ({crops_per_epoch}) must be >= batch_size ({batch_size})"
            )
        self.save_hyperparameters()
        self.root = Path(root)
        self.paths: list[Path] = []
        self.train_dataset: TileCropDataset | None = None

    def setup(self, stage: str) -> None:
        """Finds and decodes the images (once) for ``fit``."""
        if stage != "fit" or self.train_dataset is not None:
            return
        hp = self.hparams
        images, paths = [], []
        for path in find_images(self.root, hp.extensions):
            image = read_rgb(path)
            if hp.min_side is None or min(image.shape[:2]) >= hp.min_side:
                images.append(image)
                paths.append(path)
        if not images:
            raise DataError(f"{self.root}: no image has a side of at least {hp.min_side} px")
        for path, image in zip(paths, images, strict=True):
            if min(image.shape[:2]) < hp.crop_size:
                raise DataError(
                    f"{path}: {image.shape[1]} x {image.shape[0]} px, smaller than crop_size "
                    f"{hp.crop_size}: its crops would be mostly padding; lower crop_size, or "
                    "leave out small images with min_side"
                )
        self.paths = paths
        self.train_dataset = TileCropDataset(images, hp.crop_size, hp.crops_per_epoch)

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise RuntimeError("call setup('fit') first")
        hp = self.hparams
        # Under DDP each rank takes its share of the epoch's crops.
        sampler = epoch_seed_sampler(
            hp.crops_per_epoch, self.trainer, hp.batch_size, drop_last=True
        )
        return DataLoader(
            self.train_dataset,
            batch_size=hp.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
        )
