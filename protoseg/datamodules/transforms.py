"""Augmentation pipelines and reproducible random training crops for nuclei datamodules."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from protoseg.datamodules.targets import instances_to_three_class

if TYPE_CHECKING:
    from protoseg.datamodules.monuseg import ImageRecord, ImageStore

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Padding colour for images smaller than the crop: white, like empty glass on an H&E slide.
PAD_FILL = 255


def train_transform(
    crop_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale_jitter: float = 0.1,
) -> A.Compose:
    """Random square crop with mild rescaling, flips, 90-degree turns and colour jitter.

    Rescaling crops a square of side ``crop_size * s``, s uniform in
    ``[1 - scale_jitter, 1 + scale_jitter]``, and resizes it to ``crop_size`` (instance ids
    with nearest neighbour). Images smaller than the crop are padded with white, ids with 0.

    Call it as ``transform(image=image, mask=instances)``: image (H, W, 3) uint8 and
    instances (H, W) integer ids in, image (crop, crop, 3) float32 normalised with
    ``(x / 255 - mean) / std`` and mask (crop, crop) of the input dtype out. Seed each call
    with :func:`seed_transform`.
    """
    if not 0.0 <= scale_jitter < 1.0:
        raise ValueError(f"scale_jitter must be in [0, 1), got {scale_jitter}")
    largest = math.ceil(crop_size * (1.0 + scale_jitter))
    smallest = max(1, math.floor(crop_size * (1.0 - scale_jitter)))
    pad = A.PadIfNeeded(
        largest, largest, border_mode=cv2.BORDER_CONSTANT, fill=PAD_FILL, fill_mask=0
    )
    if scale_jitter > 0:
        crop: A.BasicTransform = A.RandomSizedCrop(
            min_max_height=(smallest, largest),
            size=(crop_size, crop_size),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
        )
    else:
        crop = A.RandomCrop(crop_size, crop_size)
    return A.Compose(
        [
            pad,
            crop,
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=1.0),
            # Mild: stain colour varies between labs, but hue carries the H vs E contrast.
            A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=15, val_shift_limit=10, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
            A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
        ]
    )


def seed_transform(transform: A.BaseCompose, seed: int) -> None:
    """Makes the next call of ``transform`` a function of ``seed`` only.

    ``Compose.set_random_seed`` gives every child transform the same seed, so their draws
    coincide (the horizontal and the vertical flip would always fire together). One shared
    generator pair, drawn from in turn, keeps the transforms independent.
    """
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 ``(x / 255 - mean) / std``, as in training."""
    scaled = image.astype(np.float32) / np.float32(255.0)
    scaled = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))


class EpochSeedSampler(Sampler[int]):
    """Yields ``num_samples`` sample seeds per epoch, a function of (base_seed, epoch) only.

    The dataset turns each seed into one random crop, so batches depend neither on the
    number of DataLoader workers nor on which worker loads them, and ``set_epoch`` (called
    by Lightning before each training epoch, also after resuming) gives every epoch new
    crops. Without ``set_epoch`` calls, each iteration moves on to the next epoch.

    Args:
        num_samples: seeds per epoch (the epoch length).
        base_seed: e.g. ``torch.initial_seed()``, which ``seed_everything`` sets.
    """

    def __init__(self, num_samples: int, base_seed: int) -> None:
        self.num_samples = num_samples
        self.base_seed = base_seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.base_seed, self.epoch])
        self.epoch += 1
        seeds = rng.integers(0, np.iinfo(np.int64).max, size=self.num_samples, dtype=np.int64)
        return iter(seeds.tolist())

    def __len__(self) -> int:
        return self.num_samples


class RandomCropDataset(Dataset):
    """Augmented random crops; item ``seed`` picks the image and every random choice.

    Items: ``image`` (3, h, w) float32; with labels also ``target`` (h, w) int64 three-class
    (computed after augmentation) and ``instances`` (h, w) int64 ids of the source image.
    Feed it seeds from :class:`EpochSeedSampler`; plain indices work too (the same crops
    every epoch).
    """

    def __init__(
        self, records: list[ImageRecord], store: ImageStore, crops: int, transform: A.Compose
    ) -> None:
        self.records = records
        self.store = store
        self.crops = crops
        self.transform = transform

    def __len__(self) -> int:
        return self.crops

    def __getitem__(self, seed: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(seed)
        image, instances = self.store.load(self.records[int(rng.integers(len(self.records)))])
        seed_transform(self.transform, int(rng.integers(np.iinfo(np.int64).max)))
        if instances is None:
            out = self.transform(image=image)
        else:
            out = self.transform(image=image, mask=instances)
        item = {"image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))}
        if instances is not None:
            crop = out["mask"].astype(np.int64)
            item["target"] = torch.from_numpy(instances_to_three_class(crop).astype(np.int64))
            item["instances"] = torch.from_numpy(crop)
        return item
