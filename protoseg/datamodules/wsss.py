"""Weakly supervised tissue segmentation sets in their official layouts.

LUAD-HistoSeg and WSSS4LUAD (Han et al.)::

    training/<name>-[1, 0, 0].png        image-level labels in the name, no masks
    val|validation/img/<stem>.png        validation images
    val|validation/mask/<stem>.png       palette PNG of class codes (3 = background)
    val|validation/background-mask/...   optional, 1 where the mask is background
    test/img, test/mask, ...             as validation (masks may be held back)

BCSS-WSSS (Han et al.): ``train/<name>[1101].png`` (TUM, STR, LYM, NEC) and ``val|test/{img,
mask}`` (code 4 = background). Both label spellings, with or without separators, are read.
Class names, codes and colours come from the config
(:class:`~protoseg.io.class_maps.TissueClasses`).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from protoseg.data.datasets import collate_whole_images
from protoseg.data.samplers import epoch_seed_sampler, evaluation_sampler
from protoseg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    normalize,
    seed_transform,
    train_transform,
)
from protoseg.io.class_maps import TissueClasses, read_class_map
from protoseg.io.errors import DataError
from protoseg.io.images import image_size, read_code_png, read_rgb
from protoseg.memory import available_memory

# Without a validation split val_dataloader returns [] on purpose; Lightning warns about it.
warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TRAIN_DIRS = ("training", "train")
VAL_DIRS = ("val", "validation")
TEST_DIRS = ("test",)
IMAGE_DIRS = ("img", "images")
MASK_DIR = "mask"
BACKGROUND_MASK_DIR = "background-mask"
# The bracketed label at the end of a stem: "[1, 0, 0]", "[1 0 0 1]" or "[1101]".
_LABEL_AT_END = re.compile(r"\[([^\[\]]*)\]$")


@dataclass(frozen=True)
class TissueRecord:
    """One image and what it is labelled with.

    Attributes:
        stem: the file name without suffix (the name of every file written for it).
        image_path: the RGB image.
        mask_path: class codes (a true mask or a pseudo mask), or None.
        background_path: a 0/1 background mask (1 = excluded from scoring), or None.
        labels: image-level labels, one 0/1 per class, or None.
    """

    stem: str
    image_path: Path
    mask_path: Path | None = None
    background_path: Path | None = None
    labels: tuple[int, ...] | None = None


def parse_image_label(path: Path, num_classes: int) -> tuple[int, ...] | None:
    """The image-level label at the end of a file's stem, None when it has none.

    ``x-[1, 0, 0]`` (LUAD-HistoSeg, WSSS4LUAD), ``x[1 0 0 1]`` and ``x+0[1101]`` (BCSS-WSSS)
    read as 0/1 vectors.

    Raises:
        DataError: a bracket in the stem that is not a vector of ``num_classes`` 0/1 values.
    """
    stem = path.stem
    match = _LABEL_AT_END.search(stem)
    if match is None:
        if "[" in stem or "]" in stem:
            raise DataError(f"{path}: no image-level label [..] at the end of the name")
        return None
    text = match.group(1).strip()
    values = list(text) if re.fullmatch(r"[01]+", text) else re.split(r"[,\s]+", text)
    if len(values) != num_classes or any(v not in ("0", "1") for v in values):
        raise DataError(
            f"{path}: image-level label [{text}] is not {num_classes} values of 0 or 1 "
            f"(e.g. [{', '.join('1' * num_classes)}])"
        )
    return tuple(int(v) for v in values)


def _images(folder: Path) -> dict[str, Path]:
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in images:
            raise DataError(f"{path}: same stem as {images[path.stem]}")
        images[path.stem] = path
    if not images:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def find_split(root: Path, names: tuple[str, ...]) -> Path | None:
    """The first folder of ``names`` under ``root`` that exists, else None."""
    return next((root / name for name in names if (root / name).is_dir()), None)


def find_training_records(folder: Path, num_classes: int) -> list[TissueRecord]:
    """The training images of a folder, with the image-level labels of their names.

    Raises:
        DataError: no images, an unparseable label, or names with and without labels mixed.
    """
    records = []
    for stem, path in _images(folder).items():
        records.append(TissueRecord(stem, path, labels=parse_image_label(path, num_classes)))
    labelled = [r.labels is not None for r in records]
    if any(labelled) and not all(labelled):
        first = records[labelled.index(False)]
        raise DataError(f"{first.image_path}: no image-level label [..] in the name, as others")
    return records


def find_masked_records(split: Path) -> list[TissueRecord]:
    """The images of a validation or test folder (``img/`` or ``images/``) and, where
    ``mask/`` exists, their masks (and ``background-mask/`` files, when that folder exists).

    Raises:
        DataError: no image folder or images, a mask without image or an image without mask.
    """
    image_dir = find_split(split, IMAGE_DIRS)
    if image_dir is None:
        raise DataError(f"{split}: no image folder ({' or '.join(IMAGE_DIRS)})")
    images = _images(image_dir)
    masks = {}
    for name in (MASK_DIR, BACKGROUND_MASK_DIR):
        folder = split / name
        masks[name] = _images(folder) if folder.is_dir() else {}
        for stem, path in masks[name].items():
            if stem not in images:
                raise DataError(f"{path}: mask without image (no {image_dir}/{stem}.*)")
    records = []
    for stem, path in images.items():
        mask = masks[MASK_DIR].get(stem)
        if masks[MASK_DIR] and mask is None:
            raise DataError(f"{path}: image without mask (no {split / MASK_DIR}/{stem}.png)")
        records.append(TissueRecord(stem, path, mask, masks[BACKGROUND_MASK_DIR].get(stem)))
    return records


def fold_stems(stems: list[str], folds: int, fold: int, seed: int) -> list[str]:
    """Fold ``fold`` of ``folds`` of a seeded permutation of the sorted stems (every
    ``folds``-th stem of the permutation from position ``fold``)."""
    stems = sorted(stems)
    order = np.random.default_rng(seed).permutation(len(stems))
    return sorted(stems[i] for i in order[fold::folds])


class TissueImageStore:
    """Reads images and class maps (as class indices); holds chosen ones in memory."""

    def __init__(self, classes: TissueClasses) -> None:
        self.classes = classes
        self._held: dict[TissueRecord, tuple[np.ndarray, np.ndarray | None]] = {}

    def load(self, record: TissueRecord) -> tuple[np.ndarray, np.ndarray | None]:
        """(H, W, 3) uint8 image and (H, W) uint8 class indices (None without a mask).

        Background-mask pixels of 1 become the background index (unsure without one).
        """
        if record in self._held:
            return self._held[record]
        image = read_rgb(record.image_path)
        if record.mask_path is None:
            return image, None
        indices = read_class_map(record.mask_path, self.classes, image.shape[:2])
        if record.background_path is not None:
            background = read_code_png(record.background_path)
            if background.shape != indices.shape or background.max(initial=0) > 1:
                raise DataError(
                    f"{record.background_path}: background mask must be 0/1 of the image's "
                    f"shape {indices.shape}"
                )
            excluded = self.classes.num_classes  # the background index, or unsure beyond it
            if self.classes.background_code is None:
                excluded = self.classes.ignore_index
            indices[background == 1] = excluded
        return image, indices

    def hold(self, records: list[TissueRecord]) -> None:
        """Decodes the records once and keeps them (before DataLoader workers fork, so that
        they share the arrays), unless they would take more than half the memory left."""
        available = available_memory()
        pixels = sum(int(np.prod(image_size(r.image_path))) for r in records)
        if available is not None and 4 * pixels > available // 2:
            rank_zero_warn(
                f"not holding {len(records)} images in memory: {4 * pixels / 2**30:.1f} GiB "
                "is more than half the memory left"
            )
            return
        for record in records:
            self._held[record] = self.load(record)


def present_labels(indices: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) float32 image-level labels of a class-index map: 1 where a class has any pixel."""
    counts = np.bincount(indices.ravel(), minlength=256)[:num_classes]
    return (counts > 0).astype(np.float32)


class TissueCropDataset(Dataset):
    """Augmented training views; item ``seed`` picks the image and every random choice.

    Items: ``image`` (3, h, w) float32 normalised; ``labels`` (C,) float32 image-level labels
    (from the name, else from the mask) when known; ``target`` (h, w) int64 class indices
    (``ignore_index`` where unsure or padded) when the record has a mask.
    """

    def __init__(
        self,
        records: list[TissueRecord],
        store: TissueImageStore,
        crops: int,
        transform: Any,
        class_images: list[list[int]] | None = None,
    ) -> None:
        self.records = records
        self.store = store
        self.crops = crops
        self.transform = transform
        self.class_images = class_images

    def __len__(self) -> int:
        return self.crops

    def __getitem__(self, seed: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(seed)
        if self.class_images:
            holding = self.class_images[int(rng.integers(len(self.class_images)))]
            record = self.records[holding[int(rng.integers(len(holding)))]]
        else:
            record = self.records[int(rng.integers(len(self.records)))]
        image, indices = self.store.load(record)
        seed_transform(self.transform, int(rng.integers(np.iinfo(np.int64).max)))
        out = self.transform(image=image, **({} if indices is None else {"mask": indices}))
        item = {"image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))}
        if record.labels is not None:
            item["labels"] = torch.tensor(record.labels, dtype=torch.float32)
        elif indices is not None:
            item["labels"] = torch.from_numpy(
                present_labels(indices, len(self.store.classes.names))
            )
        if indices is not None:
            item["target"] = torch.from_numpy(out["mask"].astype(np.int64))
        return item


class TissueImageDataset(Dataset):
    """Whole normalised images: ``image`` (3, H, W) float32, ``stem``, ``path`` and, with a
    mask, ``mask`` (H, W) int64 class indices and ``labels`` (C,) float32 (classes present);
    without a mask, ``labels`` of the file name when it has one (training images)."""

    def __init__(
        self,
        records: list[TissueRecord],
        store: TissueImageStore,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        self.records = records
        self.store = store
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image, indices = self.store.load(record)
        item: dict[str, Any] = {
            "image": normalize(image, self.mean, self.std),
            "stem": record.stem,
            "path": str(record.image_path),
        }
        if indices is not None:
            item["mask"] = torch.from_numpy(indices.astype(np.int64))
            item["labels"] = torch.from_numpy(
                present_labels(indices, self.store.classes.num_classes)
            )
        elif record.labels is not None:  # a training image predicted: its name's label
            item["labels"] = torch.tensor(record.labels, dtype=torch.float32)
        return item


class WSSSDataModule(L.LightningDataModule):
    """LUAD-HistoSeg / WSSS4LUAD / BCSS-WSSS roots for classifiers, semantic heads and
    prototype stages.

    Training batches: ``image`` (B, 3, h, w) float32 normalised, ``labels`` (B, C) float32
    multi-hot image-level labels and, with masks (``pseudo_mask_dir``, or ``train_split:
    val``), ``target`` (B, h, w) int64 class indices: ``0..C-1`` the classes in the order of
    ``class_names``, ``C`` the background, ``ignore_index`` (255) unsure or padding.
    Validation / test batches hold one whole image: ``image`` (1, 3, H, W), ``mask`` (1, H,
    W) int64 class indices, ``labels`` (1, C) (classes present in the mask), ``stem``,
    ``path``. Predict batches: ``image``, ``stem``, ``path`` of one image, and ``labels``
    (1, C) where its name carries them (the training split).

    Args:
        root: the dataset's folder (``training``/``train``, ``val``/``validation``,
            ``test``); for predict alone a folder with ``img/`` or ``images/``.
        class_names: the scored classes, in the order of the label vectors.
        class_codes: each class's code in mask files; default ``0..C-1``.
        background_code: code of the background / excluded area in masks; None: none.
        palette: RGB colours of the classes, then the background (for pictures and
            palette PNGs); default colours when None.
        pseudo_mask_dir: ``<stem>.png`` class-code maps of the training images (from a
            weakly supervised stage; ``255`` = unsure), trained on as ``target``.
        train_split: ``training`` (image-level labels, and pseudo masks if given) or
            ``val``: the validation images with their true masks (the fully supervised
            reference; with ``val_folds`` > 1, the folds other than ``val_fold``).
        val_folds: with ``train_split: val``, the validation images are split into this
            many seeded folds; fold ``val_fold`` is validated and tested, the others train.
        val_fold: the held-out fold, ``0 .. val_folds - 1``.
        fold_seed: seed of the fold permutation.
        val_exclude: stems of validation images left out of validation and test (e.g. the
            images whose masks a simulated pathologist saw), so that what is scored is held
            out.
        train_view: ``crop`` (random ``crop_size`` crops, for dense heads) or ``resize``
            (the whole image resized to ``crop_size``, for image-level classifiers).
        crop_size: side of the training views, px.
        crops_per_epoch: training views per epoch.
        balance_classes: each training view first draws a class (uniformly, among the
            classes some training image holds), then an image that holds it (by its
            image-level label, else by its mask): a class present in a few images (normal
            tissue in 3 of WSSS4LUAD's 41 training patches) is seen as often as the others.
            False: every image equally often.
        batch_size: training batch size (evaluation and predict use 1).
        num_workers: DataLoader processes.
        scale_jitter: training crops are rescaled by up to this fraction.
        augment: flips, 90-degree turns and colour jitter of the training views; False
            with ``train_view: resize`` gives each image the same view every time (for
            nets on a frozen encoder whose embeddings are cached per image).
        mean: normalisation mean, on [0, 1] RGB.
        std: normalisation std.
        cache_images: decode the training and validation images once and hold them.
        predict_dir: images to predict (a folder with the images, or one holding ``img/`` or
            ``images/``), relative to ``root`` or absolute; None: ``root/img``,
            ``root/images``, else the training split.
    """

    def __init__(
        self,
        root: str,
        class_names: list[str] = ["tumor", "stroma", "normal"],  # noqa: B006 (jsonargparse)
        class_codes: list[int] | None = None,
        background_code: int | None = 3,
        palette: list[tuple[int, int, int]] | None = None,
        pseudo_mask_dir: str | None = None,
        train_split: Literal["training", "val"] = "training",
        val_folds: int = 1,
        val_fold: int = 0,
        fold_seed: int = 0,
        val_exclude: list[str] | None = None,
        train_view: Literal["crop", "resize"] = "crop",
        crop_size: int = 224,
        crops_per_epoch: int = 512,
        balance_classes: bool = False,
        batch_size: int = 8,
        num_workers: int = 2,
        scale_jitter: float = 0.1,
        augment: bool = True,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        cache_images: bool = True,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        if train_split not in ("training", "val"):
            raise ValueError(f"train_split must be 'training' or 'val', got {train_split!r}")
        if train_view not in ("crop", "resize"):
            raise ValueError(f"train_view must be 'crop' or 'resize', got {train_view!r}")
        if val_folds < 1 or not 0 <= val_fold < val_folds:
            raise ValueError(f"need val_folds >= 1 and 0 <= val_fold < val_folds, got {val_fold}")
        if val_folds > 1 and train_split != "val":
            raise ValueError("val_folds > 1 splits the validation images: set train_split: val")
        if pseudo_mask_dir is not None and train_split != "training":
            raise ValueError("pseudo_mask_dir labels the training split: set train_split: training")
        for name, value in [("crop_size", crop_size), ("batch_size", batch_size)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.save_hyperparameters()
        self.root = Path(root)
        self.classes = TissueClasses.from_config(class_names, class_codes, background_code, palette)
        self.mean, self.std = tuple(mean), tuple(std)
        self.store = TissueImageStore(self.classes)
        self.train_dataset: TissueCropDataset | None = None
        self.val_dataset: TissueImageDataset | None = None
        self.test_dataset: TissueImageDataset | None = None
        self.predict_dataset: TissueImageDataset | None = None

    # --- records -------------------------------------------------------------------------

    def _split_dir(self, names: tuple[str, ...], what: str) -> Path:
        folder = find_split(self.root, names)
        if folder is None:
            raise DataError(f"{self.root}: no {what} folder ({' or '.join(names)})")
        return folder

    def _val_records(self) -> list[TissueRecord]:
        """The validation split's masked records, this fold's when there are folds."""
        folder = find_split(self.root, VAL_DIRS)
        if folder is None:
            return []
        records = find_masked_records(folder)
        if any(r.mask_path is None for r in records):
            raise DataError(f"{folder}: validation images need masks ({folder / MASK_DIR})")
        hp = self.hparams
        excluded = set(hp.val_exclude or ())
        unknown = excluded - {r.stem for r in records}
        if unknown:
            raise DataError(f"{folder}: val_exclude names no image: {', '.join(sorted(unknown))}")
        records = [r for r in records if r.stem not in excluded]
        if hp.val_folds > 1:
            held = set(
                fold_stems([r.stem for r in records], hp.val_folds, hp.val_fold, hp.fold_seed)
            )
            return [r for r in records if r.stem in held]
        return records

    def train_records(self) -> list[TissueRecord]:
        """The records a fit trains on (see ``train_split``, ``pseudo_mask_dir``)."""
        hp = self.hparams
        if hp.train_split == "val":
            folder = self._split_dir(VAL_DIRS, "validation")
            records = find_masked_records(folder)
            if hp.val_folds > 1:
                held = {r.stem for r in self._val_records()}
                records = [r for r in records if r.stem not in held]
            return records
        records = find_training_records(
            self._split_dir(TRAIN_DIRS, "training"), len(hp.class_names)
        )
        if hp.pseudo_mask_dir is None:
            if records[0].labels is None:
                raise DataError(
                    f"{records[0].image_path}: training images need image-level labels in "
                    "their names, or a pseudo_mask_dir"
                )
            return records
        folder = Path(hp.pseudo_mask_dir)
        if not folder.is_dir():
            problem = "is a file, not a folder" if folder.exists() else "does not exist"
            raise DataError(f"{folder}: pseudo-mask folder {problem}")
        paired = []
        for record in records:
            mask = folder / f"{record.stem}.png"
            if not mask.is_file():
                raise DataError(f"{mask}: pseudo mask missing (training image {record.image_path})")
            paired.append(replace(record, mask_path=mask))
        return paired

    def training_images(self) -> TissueImageDataset:
        """The training records (:meth:`train_records`) as whole, unaugmented images with
        their image-level labels (e.g. to calibrate a classifier's label thresholds)."""
        return self._whole(self.train_records())

    def predict_records(self) -> list[TissueRecord]:
        """The images predict writes maps for (see ``predict_dir``)."""
        given = self.hparams.predict_dir
        if given is None:
            folder = find_split(self.root, (*IMAGE_DIRS, *TRAIN_DIRS)) or self.root
        else:
            folder = Path(given) if Path(given).is_absolute() else self.root / given
        if not folder.is_dir():
            raise DataError(f"{folder}: image folder to predict does not exist")
        inner = find_split(folder, IMAGE_DIRS)
        if inner is None and folder.name in TRAIN_DIRS:
            # The training split: its names' image-level labels travel with the images.
            return find_training_records(folder, len(self.hparams.class_names))
        return [TissueRecord(s, p) for s, p in _images(inner or folder).items()]

    # --- Lightning hooks -----------------------------------------------------------------

    def _class_images(self, records: list[TissueRecord]) -> list[list[int]]:
        """Per class that some record holds, the indices of the records holding it.

        Raises:
            DataError: naming the labels' source (the training folder, or the pseudo-mask
                folder) when no record holds any class: there is nothing to balance.
        """
        count = len(self.classes.names)
        held = []
        for record in records:
            labels = record.labels
            if labels is None:
                indices = self.store.load(record)[1]
                labels = np.zeros(count) if indices is None else present_labels(indices, count)
            held.append(np.asarray(labels, bool))
        by_class = [[i for i, h in enumerate(held) if h[c]] for c in range(count)]
        first = records[0]
        by_name = first.labels is not None or first.mask_path is None
        source = (first.image_path if by_name else first.mask_path).parent
        if not any(by_class):
            raise DataError(
                f"{source}: balance_classes: no training image holds any of the classes "
                f"{', '.join(self.classes.names)} (by its name's label or its mask)"
            )
        absent = [n for n, images in zip(self.classes.names, by_class, strict=True) if not images]
        if absent:
            rank_zero_warn(
                f"{source}: balance_classes: no training image holds {', '.join(absent)}; "
                "the draw balances the other classes"
            )
        return [images for images in by_class if images]

    def setup(self, stage: str) -> None:
        """Finds the records of ``stage`` and builds its datasets."""
        hp = self.hparams
        if stage == "fit":
            records = self.train_records()
            transform = train_transform(
                hp.crop_size,
                self.mean,
                self.std,
                hp.scale_jitter,
                mask_fill=self.classes.ignore_index,
                resize=hp.train_view == "resize",
                augment=hp.augment,
            )
            class_images = self._class_images(records) if hp.balance_classes else None
            self.train_dataset = TissueCropDataset(
                records, self.store, hp.crops_per_epoch, transform, class_images
            )
        if stage in ("fit", "validate"):
            val = self._val_records()
            self.val_dataset = self._whole(val) if val else None
        if hp.cache_images and stage in ("fit", "validate"):
            held = [
                *getattr(self.train_dataset, "records", []),
                *getattr(self.val_dataset, "records", []),
            ]
            self.store.hold(held)
        if stage == "test":
            folder = self._split_dir(TEST_DIRS, "test") if hp.val_folds == 1 else None
            records = self._val_records() if folder is None else find_masked_records(folder)
            if not records or any(r.mask_path is None for r in records):
                raise DataError(f"{folder or self.root}: test images need masks to test on")
            self.test_dataset = self._whole(records)
        if stage == "predict":
            self.predict_dataset = self._whole(self.predict_records())

    def _whole(self, records: list[TissueRecord]) -> TissueImageDataset:
        return TissueImageDataset(records, self.store, self.mean, self.std)

    def _loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(dataset, num_workers=workers, persistent_workers=workers > 0, **kwargs)

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise RuntimeError("call setup('fit') first")
        hp = self.hparams
        sampler = epoch_seed_sampler(hp.crops_per_epoch, self.trainer, hp.batch_size)
        return self._loader(self.train_dataset, batch_size=hp.batch_size, sampler=sampler)

    def _whole_loader(self, dataset: TissueImageDataset | None, stage: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"call setup('{stage}') first")
        sampler = evaluation_sampler(dataset, self.trainer)
        return self._loader(dataset, batch_size=1, sampler=sampler, collate_fn=collate_whole_images)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        # No validation split (e.g. a root of training images only): Lightning skips it.
        return [] if self.val_dataset is None else self._whole_loader(self.val_dataset, "fit")

    def test_dataloader(self) -> DataLoader:
        return self._whole_loader(self.test_dataset, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._whole_loader(self.predict_dataset, "predict")
