"""Datasets of a root's records: augmented random training crops and whole normalised images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from protoseg.data.records import ImageRecord
from protoseg.data.store import ImageStore
from protoseg.data.targets import instances_to_three_class
from protoseg.data.transforms import normalize, seed_transform
from protoseg.io.errors import DataError

CropTargets = Callable[[np.ndarray], dict[str, np.ndarray]]
"""Turns a training crop's (h, w) ids into named float arrays (:class:`RandomCropDataset`)."""


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


class WholeImageDataset(Dataset):
    """Whole normalised images: ``image`` (3, H, W) float32, ``stem``, ``path`` and, for
    labelled records when ``with_labels``, ``instances`` (H, W) int64, at the image file's
    own resolution (which a resampling store's images are not at)."""

    def __init__(
        self,
        records: list[ImageRecord],
        store: ImageStore,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        with_labels: bool = True,
    ) -> None:
        self.records = records
        self.store = store
        self.mean = mean
        self.std = std
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        if self.with_labels:
            image, instances = self.store.load(record, native=True)
        else:
            image, instances = self.store.image(record.image_path), None
        item: dict[str, Any] = {
            "image": normalize(image, self.mean, self.std),
            "stem": record.stem,
            "path": str(record.image_path),
        }
        if instances is not None:
            item["instances"] = torch.from_numpy(instances.astype(np.int64))
        return item


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
            a module's targets are built in the DataLoader's workers; a datamodule passes
            what its module asks for (:func:`requested_crop_targets`).
    """

    def __init__(
        self,
        records: list[ImageRecord],
        store: ImageStore,
        crops: int,
        transform: A.Compose,
        crop_targets: CropTargets | None = None,
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


def requested_crop_targets(trainer: Any) -> CropTargets | None:
    """What the trainer's LightningModule asks each training crop to carry beside its image
    and ids, built in the loader's workers: its ``loader_crop_targets()`` (e.g. the centre
    detector's heatmap and offsets,
    :meth:`~protoseg.lightning_modules.centre_detector.CentreDetectorModule.loader_crop_targets`);
    None when it asks for nothing or no trainer is attached. A datamodule reads it when it
    builds its crops: the module never reaches into the datamodule."""
    module = getattr(trainer, "lightning_module", None)
    request = getattr(module, "loader_crop_targets", None)
    return request() if callable(request) else None
