"""Augmentation of training crops and normalisation of images, as every datamodule does it."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Padding colour for images smaller than the crop: white, like empty glass on an H&E slide.
PAD_FILL = 255


def train_transform(
    crop_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale_jitter: float = 0.1,
    mask_fill: int = 0,
    resize: bool = False,
    augment: bool = True,
) -> A.Compose:
    """Random square crop with mild rescaling, flips, 90-degree turns and colour jitter.

    Rescaling crops a square of side ``crop_size * s``, s uniform in
    ``[1 - scale_jitter, 1 + scale_jitter]``, and resizes it to ``crop_size`` (instance ids
    with nearest neighbour). Images smaller than the crop are padded with white, masks with
    ``mask_fill`` (0, background, for instance ids; a loss's ignore index for class maps).
    With ``resize`` the whole image is resized to ``crop_size`` square instead of cropped
    (a classifier's view: an image-level label holds for the whole image only). Without
    ``augment`` no flips, turns or colour jitter follow (the same view of an image every
    time: a frozen encoder's embedding of it is computed once and cached).

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
        largest, largest, border_mode=cv2.BORDER_CONSTANT, fill=PAD_FILL, fill_mask=mask_fill
    )
    crop: A.BasicTransform = A.RandomCrop(crop_size, crop_size)
    if scale_jitter > 0:
        crop = A.RandomSizedCrop(
            min_max_height=(smallest, largest),
            size=(crop_size, crop_size),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
        )
    geometry: list[A.BasicTransform] = [pad, crop]
    if resize:
        geometry = [
            A.Resize(
                crop_size,
                crop_size,
                interpolation=cv2.INTER_AREA,
                mask_interpolation=cv2.INTER_NEAREST,
            )
        ]
    augmentation: list[A.BasicTransform] = [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=1.0),
        # Mild: stain colour varies between labs, but hue carries the H vs E contrast.
        A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=15, val_shift_limit=10, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
    ]
    return A.Compose(
        [
            *geometry,
            *(augmentation if augment else []),
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
