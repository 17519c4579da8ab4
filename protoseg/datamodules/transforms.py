"""Augmentation pipelines and reproducible random training crops for nuclei datamodules."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import albumentations as A
import cv2
import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import (
    BatchSampler,
    Dataset,
    DistributedSampler,
    Sampler,
    default_collate,
)

from protoseg.datamodules.targets import instances_to_three_class
from protoseg.io.errors import DataError

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
    mask_fill: int = 0,
    resize: bool = False,
) -> A.Compose:
    """Random square crop with mild rescaling, flips, 90-degree turns and colour jitter.

    Rescaling crops a square of side ``crop_size * s``, s uniform in
    ``[1 - scale_jitter, 1 + scale_jitter]``, and resizes it to ``crop_size`` (instance ids
    with nearest neighbour). Images smaller than the crop are padded with white, masks with
    ``mask_fill`` (0, background, for instance ids; a loss's ignore index for class maps).
    With ``resize`` the whole image is resized to ``crop_size`` square instead of cropped
    (a classifier's view: an image-level label holds for the whole image only).

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
    return A.Compose(
        [
            *geometry,
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


def collate_whole_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` of whole-image items, after checking that they share one size
    (the error names the images and their sizes)."""
    sizes = {tuple(item["image"].shape[-2:]) for item in items}
    if len(sizes) > 1:
        listed = ", ".join(f"{item['path']} {tuple(item['image'].shape[-2:])}" for item in items)
        raise DataError(
            f"a batch of whole images needs one size, got {listed}: set predict_batch_size: 1"
        )
    return default_collate(items)


class SameSizeBatchSampler(BatchSampler):
    """Batches of up to ``batch_size`` of ``sampler``'s indices whose images share one size,
    so that whole images of a folder of mixed sizes can be predicted several to a batch.

    Indices are taken in the sampler's order; each size collects its own batch, which is
    yielded as soon as it is full, and the unfilled ones follow at the end (dropped with
    ``drop_last``). Lightning rebuilds it around its own sampler (a ``DistributedSampler``
    under DDP, so each rank batches its share).

    Args:
        sampler: indices into the dataset.
        batch_size: images per batch at most.
        drop_last: drop each size's last unfilled batch.
        sizes: (height, width) of every dataset item, by index.
    """

    def __init__(
        self,
        sampler: Sampler[int] | Iterable[int],
        batch_size: int,
        drop_last: bool,
        sizes: Sequence[tuple[int, int]],
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.sizes = [tuple(size) for size in sizes]

    def __iter__(self) -> Iterator[list[int]]:
        pending: dict[tuple[int, ...], list[int]] = {}
        for index in self.sampler:
            size = self.sizes[index]
            batch = pending.setdefault(size, [])
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch
                pending[size] = []
        if not self.drop_last:
            yield from (batch for batch in pending.values() if batch)

    def __len__(self) -> int:
        counts = Counter(self.sizes[index] for index in self.sampler)
        if self.drop_last:
            return sum(count // self.batch_size for count in counts.values())
        return sum(math.ceil(count / self.batch_size) for count in counts.values())


class EpochSeedSampler(DistributedSampler):
    """Yields sample seeds, a function of (base_seed, epoch) only, shared among DDP ranks.

    The dataset turns each seed into one random crop, so batches depend neither on the
    number of DataLoader workers nor on which worker loads them, and ``set_epoch`` (called
    by Lightning before each training epoch, also after resuming) gives every epoch new
    crops. Without ``set_epoch`` calls, each iteration moves on to the next epoch.

    Every rank draws the same ``num_samples`` epoch seeds and keeps every
    ``num_replicas``-th one from its ``rank`` on (the last ``num_samples % num_replicas``
    are dropped, so that ranks step together): the shares are disjoint, and step ``k``'s
    batches of all ranks together hold seeds ``k * B * W`` to ``(k + 1) * B * W - 1``, the
    batch a single process with batch size ``B * W`` trains on. Being a
    ``DistributedSampler``, Lightning uses it as it is instead of wrapping it in its own
    (shuffling, padding) distributed sampler. Build it with :func:`epoch_seed_sampler`.

    Args:
        num_samples: seeds per epoch for all ranks together (the epoch length).
        base_seed: e.g. ``torch.initial_seed()``, which ``seed_everything`` sets; the same on
            every rank.
        num_replicas: number of DDP processes.
        rank: this process's global rank.
    """

    def __init__(
        self, num_samples: int, base_seed: int, num_replicas: int = 1, rank: int = 0
    ) -> None:
        if num_samples < num_replicas:
            raise ValueError(f"{num_samples} samples cannot feed {num_replicas} processes")
        super().__init__(
            range(num_samples),
            num_replicas=num_replicas,
            rank=rank,
            shuffle=False,
            seed=base_seed,
            drop_last=True,
        )
        # DistributedSampler's num_samples is per rank; this is the epoch's, all ranks.
        self.epoch_samples = num_samples
        self.base_seed = base_seed
        self._skip = 0  # this rank's seeds to leave out of the next iteration (resume_at)

    def resume_at(self, epoch: int, skip: int) -> None:
        """Makes the next iteration epoch ``epoch``'s seeds without this rank's first ``skip``.

        A fit resumed mid-epoch thus trains on the crops an uninterrupted fit would have
        seen next, instead of restarting the epoch (or epoch 0) from its first crop.
        """
        if not 0 <= skip <= self.num_samples:
            raise ValueError(f"skip must be in [0, {self.num_samples}], got {skip}")
        self.set_epoch(epoch)
        self._skip = skip

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.base_seed, self.epoch])
        self.epoch += 1
        skip, self._skip = self._skip, 0
        seeds = rng.integers(0, np.iinfo(np.int64).max, size=self.epoch_samples, dtype=np.int64)
        return iter(seeds[self.rank : self.total_size : self.num_replicas][skip:].tolist())

    def __len__(self) -> int:
        return self.num_samples


def epoch_seed_sampler(
    num_samples: int, trainer: L.Trainer | None, batch_size: int = 1, drop_last: bool = False
) -> EpochSeedSampler:
    """The training sampler of a datamodule attached to ``trainer`` (None: one process).

    The base seed is ``torch.initial_seed()`` (the ``seed_everything`` seed, a fresh random one
    without it), rank 0's under DDP: were the ranks' seeds to differ, their shares would
    overlap. A trainer restored from a checkpoint (``global_step > 0``) has the sampler
    continue where that checkpoint's run stood (:func:`resume_sampler`); ``batch_size`` and
    ``drop_last`` are the DataLoader's.
    """
    base_seed = torch.initial_seed()
    if trainer is None or trainer.world_size == 1:
        sampler = EpochSeedSampler(num_samples, base_seed)
    else:
        base_seed = trainer.strategy.broadcast(base_seed, src=0)
        sampler = EpochSeedSampler(num_samples, base_seed, trainer.world_size, trainer.global_rank)
    if trainer is not None and trainer.global_step > 0:
        resume_sampler(sampler, trainer, batch_size, drop_last)
    return sampler


def resume_sampler(
    sampler: EpochSeedSampler, trainer: L.Trainer, batch_size: int, drop_last: bool = False
) -> None:
    """Positions ``sampler`` after the batches of the ``trainer.global_step`` steps done.

    Lightning restarts the training DataLoader from its first batch when it resumes
    mid-epoch (and, since it creates the iterator before it sets the sampler's epoch, from
    epoch 0's seeds). Every epoch here has the same number of batches, so the step count
    alone tells the epoch and the batch to go on from. With ``limit_train_batches`` the
    epoch length is not the loader's and the sampler is left as it is (with a warning).

    A checkpoint saved after the *last* batch of an epoch is the exception: Lightning 2.6
    then ends its resumed epoch after one batch and starts the next, so from the second
    batch on the crops are those of one epoch later than an uninterrupted fit's (the step
    count is still exact).
    """
    if trainer.limit_train_batches not in (1, 1.0):
        rank_zero_warn(
            "limit_train_batches is set: a resumed fit restarts its epoch's crops from the first"
        )
        return
    rounding = math.floor if drop_last else math.ceil
    batches_per_epoch = max(rounding(len(sampler) / batch_size), 1)
    batches_done = trainer.global_step * trainer.accumulate_grad_batches
    epoch, batch = divmod(batches_done, batches_per_epoch)
    sampler.resume_at(epoch, batch * batch_size)


def evaluation_sampler(dataset: Dataset, trainer: L.Trainer | None) -> Sampler[int] | None:
    """Under DDP, each image of ``dataset`` once, on one rank; None (in order) otherwise.

    Lightning's default distributed sampler pads the dataset to a multiple of the number of
    processes by repeating images, which metrics averaged over images would count twice.
    With this one ranks may hold one image more than others; the metrics gather per-image
    scores (:class:`~protoseg.metrics.NucleiMetrics`), so every image counts once. With fewer
    images than processes a rank would have none and skip the epoch-end hooks where metrics
    sync (a hang), so Lightning's padding sampler is kept, with a warning.
    """
    if trainer is None or trainer.world_size == 1:
        return None
    if len(dataset) < trainer.world_size:
        rank_zero_warn(
            f"{len(dataset)} evaluation images for {trainer.world_size} processes: some "
            "images are scored twice (Lightning pads every process to one image)"
        )
        return None
    return UnrepeatedDistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )


class RandomCropDataset(Dataset):
    """Augmented random crops; item ``seed`` picks the image and every random choice.

    Items: ``image`` (3, h, w) float32; with labels also ``target`` (h, w) int64 three-class
    (computed after augmentation), ``instances`` (h, w) int64 ids of the source image and
    whatever arrays ``crop_targets`` builds from those ids. Feed it seeds from
    :class:`EpochSeedSampler`; plain indices work too (the same crops every epoch).

    Args:
        records: the images (and label maps) crops are drawn from.
        store: reads (and may hold) the records' arrays.
        crops: items per epoch.
        transform: :func:`train_transform` or any albumentations pipeline of that form.
        crop_targets: a picklable callable turning a crop's (h, w) ids into named float
            arrays (e.g. :class:`~protoseg.modules.centre_targets.CentreTargets`), so that
            a module's targets are built in the DataLoader's workers; a module may set it
            before its loader's workers start.
    """

    def __init__(
        self,
        records: list[ImageRecord],
        store: ImageStore,
        crops: int,
        transform: A.Compose,
        crop_targets: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
    ) -> None:
        self.records = records
        self.store = store
        self.crops = crops
        self.transform = transform
        self.crop_targets = crop_targets

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
            if self.crop_targets is not None:
                item.update((k, torch.from_numpy(v)) for k, v in self.crop_targets(crop).items())
        return item
