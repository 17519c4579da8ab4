"""BCData (Huang et al., MICCAI 2020): Ki-67 IHC images with positive / negative cell points.

The official layout::

    root/images/{train,validation,test}/<stem>.png
    root/annotations/{train,validation,test}/positive/<stem>.h5
    root/annotations/{train,validation,test}/negative/<stem>.h5

Each HDF5 file holds a ``coordinates`` dataset of shape (N, 2): one (x, y) pixel position
(column, row) per annotated cell centre; N may be 0. Class ids: 0 = negative, 1 = positive
(DAB-stained), which is also the order PSM's DAB-ranked cell clusters come in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from protoseg.data.datasets import RandomCropDataset, WholeImageDataset
from protoseg.data.records import ImageRecord
from protoseg.data.samplers import EpochSeedSampler
from protoseg.data.store import ImageStore
from protoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, train_transform
from protoseg.io.errors import DataError

SPLITS = ("train", "validation", "test")
CLASSES = ("negative", "positive")


def read_points_h5(path: str | Path) -> np.ndarray:
    """(N, 2) float32 (x, y) cell centres of one BCData annotation file.

    Raises:
        DataError: the file is missing, is not HDF5, has no ``coordinates`` dataset, or that
            dataset is not (N, 2) finite numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file missing")
    try:
        with h5py.File(path, "r") as handle:
            if "coordinates" not in handle:
                raise DataError(f"{path}: no 'coordinates' dataset (keys: {list(handle)})")
            points = np.asarray(handle["coordinates"][()], dtype=np.float64)
    except OSError as error:
        raise DataError(f"{path}: not a readable HDF5 file ({error})") from error
    if points.size == 0:
        return np.zeros((0, 2), np.float32)
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise DataError(f"{path}: 'coordinates' must be (N, 2) finite (x, y), got {points.shape}")
    return points.astype(np.float32)


def find_split(root: str | Path, split: str, with_points: bool = True) -> list[ImageRecord]:
    """The images of one split, sorted by stem; checks both annotation files of each.

    Raises:
        DataError: missing or empty image folder, a missing annotation file.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    folder = root / "images" / split
    if not folder.is_dir():
        raise DataError(f"{folder}: images folder does not exist")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not paths:
        raise DataError(f"{folder}: no images (*.png)")
    if with_points:
        for path in paths:
            for name in CLASSES:
                h5 = root / "annotations" / split / name / f"{path.stem}.h5"
                if not h5.is_file():
                    raise DataError(f"{h5}: annotation missing for image {path}")
    return [ImageRecord(p.stem, p) for p in paths]


class PointsDataset(Dataset):
    """Whole images with their cells: ``image`` (3, H, W), ``stem``, ``path``, ``points``
    (N, 2) float32 (x, y) and ``point_classes`` (N,) int64 (0 negative, 1 positive)."""

    def __init__(
        self,
        root: Path,
        split: str,
        records: list[ImageRecord],
        store: ImageStore,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        self.root, self.split, self.records, self.store = root, split, records, store
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = self.store.image(record.image_path)
        points, classes = [], []
        for class_id, name in enumerate(CLASSES):
            found = read_points_h5(
                self.root / "annotations" / self.split / name / f"{record.stem}.h5"
            )
            points.append(found)
            classes.append(np.full(len(found), class_id, np.int64))
        return {
            "image": normalize(image, self.mean, self.std),
            "stem": record.stem,
            "path": str(record.image_path),
            "points": torch.from_numpy(np.concatenate(points)),
            "point_classes": torch.from_numpy(np.concatenate(classes)),
        }


def collate_points(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacks images; keeps per-image lists for stems, paths and the variable-length points."""
    batch: dict[str, Any] = {"image": torch.stack([item["image"] for item in items])}
    for key in ("stem", "path", "points", "point_classes"):
        batch[key] = [item[key] for item in items]
    return batch


class BCDataDataModule(L.LightningDataModule):
    """BCData: label-free training crops of ``train``, scored on ``validation`` points.

    Training batches hold only ``image`` (B, 3, h, w) normalised (points never train).
    Validation / test batches hold one whole image with its ``points`` and ``point_classes``
    (lists, see :class:`PointsDataset`); predict batches the images of ``predict_split``.

    Args:
        root: BCData folder with ``images/`` and ``annotations/``.
        crop_size: side of the square training crops, px.
        crops_per_epoch: training crops per epoch.
        batch_size: training batch size (evaluation uses 1).
        num_workers: DataLoader processes.
        mean: per-channel normalisation mean, on [0, 1] RGB.
        std: per-channel normalisation std.
        predict_split: split whose images ``predict`` reads.
    """

    def __init__(
        self,
        root: str,
        crop_size: int = 256,
        crops_per_epoch: int = 512,
        batch_size: int = 16,
        num_workers: int = 2,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        predict_split: str = "test",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root)
        self.mean, self.std = tuple(mean), tuple(std)
        self.store = ImageStore()
        self.datasets: dict[str, Dataset] = {}

    def _points(self, split: str) -> PointsDataset:
        records = find_split(self.root, split)
        return PointsDataset(self.root, split, records, self.store, self.mean, self.std)

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "fit":
            records = find_split(self.root, "train", with_points=False)
            transform = train_transform(hp.crop_size, self.mean, self.std, 0.0)
            self.datasets["train"] = RandomCropDataset(
                records, self.store, hp.crops_per_epoch, transform
            )
        if stage in ("fit", "validate"):
            self.datasets["validation"] = self._points("validation")
        if stage == "test":
            self.datasets["test"] = self._points("test")
        if stage == "predict":
            records = find_split(self.root, hp.predict_split, with_points=False)
            self.datasets["predict"] = WholeImageDataset(
                records, self.store, self.mean, self.std, with_labels=False
            )

    def _loader(self, split: str, **kwargs: Any) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"call setup() for the {split} split first")
        workers = self.hparams.num_workers
        return DataLoader(
            self.datasets[split], num_workers=workers, persistent_workers=workers > 0, **kwargs
        )

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSeedSampler(self.hparams.crops_per_epoch, torch.initial_seed())
        return self._loader("train", batch_size=self.hparams.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", batch_size=1, collate_fn=collate_points)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", batch_size=1, collate_fn=collate_points)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", batch_size=1)
