"""Where the shared data core lived before :mod:`protoseg.data`: its names, kept importable
from here for code written against the old path. New code imports :mod:`protoseg.data`."""

from __future__ import annotations

from protoseg.data.datasets import RandomCropDataset, collate_whole_images
from protoseg.data.samplers import (
    EpochSeedSampler,
    SameSizeBatchSampler,
    epoch_seed_sampler,
    evaluation_sampler,
    resume_sampler,
)
from protoseg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PAD_FILL,
    normalize,
    seed_transform,
    train_transform,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PAD_FILL",
    "EpochSeedSampler",
    "RandomCropDataset",
    "SameSizeBatchSampler",
    "collate_whole_images",
    "epoch_seed_sampler",
    "evaluation_sampler",
    "normalize",
    "resume_sampler",
    "seed_transform",
    "train_transform",
]
