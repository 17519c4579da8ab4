"""MoNuSeg-layout data: random training crops, whole images for validation, test and predict.

A root holds ``images/*.tif|*.tiff|*.png|*.jpg|*.jpeg`` and, optionally,
``annotations_xml/<stem>.xml`` (Aperio polygons) and/or ``labels/<stem>.png`` (instance maps),
as the MoNuSeg release does. Images at another resolution than the models' are resampled to
it as they are read (``image_mpp``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from protoseg.datamodules.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomCropDataset,
    SameSizeBatchSampler,
    collate_whole_images,
    epoch_seed_sampler,
    evaluation_sampler,
    normalize,
    train_transform,
)
from protoseg.io.aperio_xml import rasterize_polygons, read_aperio_polygons
from protoseg.io.errors import DataError
from protoseg.io.images import image_size, read_instance_png, read_rgb
from protoseg.io.resample import resampled_shape, resize_nearest, resize_rgb, scale_points
from protoseg.memory import available_memory

# Without true labels val_dataloader returns [] on purpose (no validation); Lightning warns
# about every such empty list, which reads as a fault on a folder of your own images.
warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")

# JPEG too: tiles exported by slide viewers often are (lossy, but the models train on it).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
LabelFormat = Literal["xml", "png"]
# Folder and suffix of each annotation format; "auto" prefers the official XML polygons,
# which the data README recommends for evaluation.
ANNOTATION_FOLDERS: dict[LabelFormat, str] = {"xml": "annotations_xml", "png": "labels"}


@dataclass(frozen=True)
class ImageRecord:
    """One image of a root and the annotation its labels come from (None: unlabelled)."""

    stem: str
    image_path: Path
    label_path: Path | None = None
    label_format: LabelFormat | None = None


def _files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in suffixes:
            continue
        if path.stem in files:
            raise DataError(f"{path}: same stem as {files[path.stem]}")
        files[path.stem] = path
    return files


def _image_files(folder: Path, what: str) -> dict[str, Path]:
    """A folder's images by stem; ``what`` names the folder in the errors."""
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} does not exist")
    images = _files(folder, IMAGE_SUFFIXES)
    if not images:
        listed = ", ".join(f"*{suffix}" for suffix in IMAGE_SUFFIXES)
        raise DataError(f"{folder}: no images ({listed})")
    return images


def find_records(
    root: str | Path, label_source: Literal["auto", "xml", "png", "none"] = "auto"
) -> list[ImageRecord]:
    """Lists a root's images, sorted by stem, with the annotation each is labelled by.

    ``xml`` / ``png`` read that folder only; ``auto`` takes ``annotations_xml/<stem>.xml``
    where it exists, else ``labels/<stem>.png``, and no labels when neither folder exists;
    ``none`` ignores annotations. With annotations, every image needs one and every
    annotation file needs its image (MoNuSeg's train root: 30 PNGs, 13 XMLs, all covered).

    Raises:
        DataError: missing or empty images folder, a missing annotation folder for ``xml``
            or ``png``, an image without annotation or an annotation without image.
    """
    if label_source not in ("auto", "xml", "png", "none"):
        raise ValueError(f"label_source must be auto, xml, png or none, not {label_source!r}")
    root = Path(root)
    image_dir = root / "images"
    images = _image_files(image_dir, "images folder")
    formats: tuple[LabelFormat, ...] = ("xml", "png") if label_source == "auto" else ()
    if label_source in ("xml", "png"):
        formats = (label_source,)
    annotations: dict[LabelFormat, dict[str, Path]] = {}
    for fmt in formats:
        folder = root / ANNOTATION_FOLDERS[fmt]
        if folder.is_dir():
            annotations[fmt] = _files(folder, (f".{fmt}",))
        elif label_source != "auto":
            raise DataError(f"{folder}: annotation folder does not exist (label_source={fmt!r})")
    for files in annotations.values():
        for stem, path in files.items():
            if stem not in images:
                raise DataError(f"{path}: annotation without image (no {image_dir}/{stem}.*)")
    records = []
    for stem, image_path in images.items():
        found = [(fmt, files[stem]) for fmt, files in annotations.items() if stem in files]
        if annotations and not found:
            expected = " or ".join(
                f"{root / ANNOTATION_FOLDERS[fmt] / stem}.{fmt}" for fmt in annotations
            )
            raise DataError(f"{image_path}: no annotation (expected {expected})")
        fmt, label_path = found[0] if found else (None, None)
        records.append(ImageRecord(stem, image_path, label_path, fmt))
    return records


def find_unlabelled(folders: list[str | Path], taken: set[str]) -> list[ImageRecord]:
    """The images of further folders as unlabelled records, sorted by stem.

    Raises:
        DataError: a missing or empty folder, or a stem that is in ``taken`` (the root's
            stems) or in two folders: pseudo masks are written and found by stem.
    """
    seen = {stem: Path("the root") for stem in taken}
    records = []
    for folder in map(Path, folders):
        for stem, path in _image_files(folder, "unlabelled image folder").items():
            if stem in seen:
                raise DataError(f"{path}: same stem as an image of {seen[stem]}")
            seen[stem] = folder
            records.append(ImageRecord(stem, path))
    return sorted(records, key=lambda record: record.stem)


def split_stems(stems: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Image-wise train/val split: a seeded permutation of the sorted stems.

    ``round(val_fraction * n)`` images (at least 1) go to validation. ``val_fraction == 0``
    returns all stems for both: validation then measures fit, not held-out performance.
    """
    stems = sorted(stems)
    if val_fraction == 0:
        return stems, stems
    n_val = max(1, round(val_fraction * len(stems)))
    if n_val >= len(stems):
        raise ValueError(f"val_fraction={val_fraction} leaves no training image among {len(stems)}")
    order = np.random.default_rng(seed).permutation(len(stems))
    val = {stems[i] for i in order[:n_val]}
    return [s for s in stems if s not in val], [s for s in stems if s in val]


class ImageStore:
    """Reads images and instance maps; :meth:`keep` holds chosen ones decoded in memory.

    Instance maps from XML are rasterised to the image size; PNG maps must match it. With
    ``scale`` other than 1 both are resampled by it (images with an area filter or
    bilinearly, XML polygons drawn on the finer or coarser grid, PNG maps by nearest
    neighbour; :mod:`protoseg.io.resample`), except the maps asked for ``native``: those stay
    at the image file's resolution, the one validation scores at. Kept maps are uint16 where
    the ids fit (a 1000 px MoNuSeg image: 3 MB + 2 MB). Only what :meth:`keep` loaded stays:
    one-pass test and predict reads are not held.

    Args:
        scale: factor every image and map is resized by (image µm/px over the models' µm/px).
    """

    def __init__(self, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.scale = scale
        self._images: dict[Path, np.ndarray] = {}
        # Keyed by (label file, native): a map at the models' and at the file's resolution.
        self._labels: dict[tuple[Path, bool], np.ndarray] = {}

    def __len__(self) -> int:
        """Number of images held in memory."""
        return len(self._images)

    def label_key(self, path: Path | None, native: bool) -> tuple[Path | None, bool]:
        """Where the map of label file ``path`` is kept: native maps are maps of their own
        only when this store resamples (at scale 1 both are the file's)."""
        return path, native and self.scale != 1

    def image(self, path: Path) -> np.ndarray:
        """(H, W, 3) uint8, resampled by ``scale``."""
        if path in self._images:
            return self._images[path]
        image = read_rgb(path)
        return resize_rgb(image, resampled_shape(image.shape[:2], self.scale))

    def instances(
        self, path: Path, fmt: LabelFormat, shape: tuple[int, int], native: bool = False
    ) -> np.ndarray:
        """Instance ids (uint16 or int32) for an image file of ``shape`` (H, W), resampled by
        ``scale`` as the image is, or at ``shape`` itself when ``native``."""
        key = self.label_key(path, native)
        if key in self._labels:
            return self._labels[key]
        scale = 1.0 if native else self.scale
        target = resampled_shape(shape, scale)
        if fmt == "xml":
            polygons = read_aperio_polygons(path)
            if scale != 1:
                polygons = [scale_points(vertices, scale) for vertices in polygons]
            instances = rasterize_polygons(polygons, target)
        else:
            instances = read_instance_png(path)
            if instances.shape != shape:
                raise DataError(f"{path}: label shape {instances.shape} != image shape {shape}")
            instances = resize_nearest(instances, target)
        if instances.max(initial=0) <= np.iinfo(np.uint16).max:
            instances = instances.astype(np.uint16)
        return instances

    def load(
        self, record: ImageRecord, native: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Image and, when the record is labelled, its instance map (at the image file's
        resolution when ``native``, else at the image's)."""
        image = self.image(record.image_path)
        if record.label_path is None or record.label_format is None:
            return image, None
        key = self.label_key(record.label_path, native)
        if key in self._labels:  # every training crop: no header read
            return image, self._labels[key]
        shape = image.shape[:2] if self.scale == 1 else image_size(record.image_path)
        return image, self.instances(record.label_path, record.label_format, shape, native)

    def keep(self, record: ImageRecord, native: bool = False) -> None:
        """Loads a record (checking its files) and holds its arrays in memory."""
        image, instances = self.load(record, native)
        self._images[record.image_path] = image
        if instances is not None and record.label_path is not None:
            self._labels[self.label_key(record.label_path, native)] = instances


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


class MoNuSegDataModule(L.LightningDataModule):
    """MoNuSeg-layout root: training crops, whole-image validation, test and prediction.

    Training batches: ``image`` float32 (B, 3, h, w) normalised, ``target`` int64 (B, h, w)
    with :mod:`~protoseg.datamodules.targets` classes and ``instances`` int64 (B, h, w)
    (ids of the source image); only ``image`` where a training image has neither labels nor
    a pseudo mask.
    Validation / test batches hold one whole image: ``image`` (1, 3, H, W), ``instances``
    int64 (1, H, W) (absent without labels), ``stem`` [str] and ``path`` [str]; predict
    batches ``predict_batch_size`` images of one size, without ``instances``.

    The split is image-wise (:func:`split_stems`). Validation and test use the true labels
    only; with ``pseudo_mask_dir`` training uses ``<pseudo_mask_dir>/<stem>.png`` instead
    (binary masks are split into 8-connected objects). Without true labels there is no
    validation and every image trains. Images of ``unlabelled_dirs`` only ever train. Test
    uses every labelled image of the root, predict every image (``unlabelled_dirs`` too, so
    that a label-free stage writes their pseudo masks). Crops are reproducible: they depend
    only on ``torch.initial_seed()`` (set by ``seed_everything``), the epoch and the position
    in it, whatever ``num_workers``.

    Args:
        root: folder with ``images/`` and optionally ``annotations_xml/``, ``labels/``.
        label_source: ``auto`` (XML where present, else PNG), ``xml``, ``png`` or ``none``.
        pseudo_mask_dir: folder of training instance maps from a label-free stage.
        val_fraction: share of images held out for validation; 0 validates on all images
            (a fit score, not a held-out one).
        split_seed: seed of the train/val permutation.
        crop_size: side of the square training crops, px.
        crops_per_epoch: training crops per epoch.
        batch_size: training batch size (evaluation uses 1: whole images differ in size).
        num_workers: DataLoader processes (kept alive between epochs when > 0).
        mean: per-channel normalisation mean, on [0, 1] RGB.
        std: per-channel normalisation std.
        cache_images: keep the decoded fit/validate images and labels in memory (30
            MoNuSeg images: ~150 MB), so epochs neither re-decode TIFFs nor re-rasterise XML.
            Skipped, with a warning, where they would take more than half the memory left to
            each process of the job (:func:`~protoseg.memory.available_memory`).
        scale_jitter: training crops are rescaled by up to this fraction (0 disables).
        predict_batch_size: whole images per prediction batch, at most; a batch holds
            images of one size (a folder of mixed sizes is batched size by size), and a head
            with ``postprocess_workers`` splits a batch's images side by side.
        image_mpp: µm per pixel of the root's images; None: they are at ``mpp`` already.
            Otherwise every image, training label and pseudo mask is resampled to ``mpp``
            when read, so models and crops work at ``mpp``;
            :class:`~protoseg.callbacks.prediction_writer.InstancePredictionWriter` writes
            each predicted map back at its input's size (e.g. ``image_mpp: 0.5`` for 20x
            tiles predicted by a model trained on MoNuSeg's 40x), and validation and test
            score it there too, against the labels as they are (labels enlarged by nearest
            neighbour would have blocky outlines, which lower AJI).
        mpp: µm per pixel the stage's models work at (MoNuSeg's 40x: about 0.25).
        unlabelled_dirs: folders of further images (no annotations) that train beside the
            root's, e.g. unannotated tiles for a label-free chain whose labelled root only
            scores; they share ``image_mpp`` and need stems unique across the folders.
    """

    def __init__(
        self,
        root: str,
        label_source: Literal["auto", "xml", "png", "none"] = "auto",
        pseudo_mask_dir: str | None = None,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        crop_size: int = 256,
        crops_per_epoch: int = 512,
        batch_size: int = 8,
        num_workers: int = 2,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        cache_images: bool = True,
        scale_jitter: float = 0.1,
        predict_batch_size: int = 1,
        image_mpp: float | None = None,
        mpp: float = 0.25,
        unlabelled_dirs: list[str] | None = None,
    ) -> None:
        super().__init__()
        if mpp <= 0 or (image_mpp is not None and image_mpp <= 0):
            raise ValueError(f"mpp and image_mpp must be > 0, got {mpp}, {image_mpp}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        for name, value in [
            ("crop_size", crop_size),
            ("crops_per_epoch", crops_per_epoch),
            ("batch_size", batch_size),
            ("predict_batch_size", predict_batch_size),
        ]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.save_hyperparameters()
        self.root = Path(root)
        self.pseudo_mask_dir = None if pseudo_mask_dir is None else Path(pseudo_mask_dir)
        self.mean, self.std = tuple(mean), tuple(std)
        self.store = ImageStore(1.0 if image_mpp is None else image_mpp / mpp)
        self.records: list[ImageRecord] = []
        self.train_records: list[ImageRecord] = []
        self.val_records: list[ImageRecord] = []
        self.train_dataset: RandomCropDataset | None = None
        self.val_dataset: WholeImageDataset | None = None
        self.test_dataset: WholeImageDataset | None = None
        self.predict_dataset: WholeImageDataset | None = None

    @property
    def label_sources(self) -> dict[str, str | None]:
        """Where each image's true labels come from: ``"xml"``, ``"png"`` or None."""
        return {r.stem: r.label_format for r in self.records}

    def _split(self) -> None:
        hp = self.hparams
        records = find_records(self.root, hp.label_source)
        by_stem = {r.stem: r for r in records}
        if any(r.label_path is not None for r in records):
            train, val = split_stems(list(by_stem), hp.val_fraction, hp.split_seed)
        else:
            train, val = sorted(by_stem), []
        unlabelled = find_unlabelled(hp.unlabelled_dirs or [], set(by_stem))
        self.records = records + unlabelled
        self.train_records = [by_stem[s] for s in train] + unlabelled
        self.val_records = [by_stem[s] for s in val]

    def _pseudo_records(self, records: list[ImageRecord]) -> list[ImageRecord]:
        folder = self.pseudo_mask_dir
        assert folder is not None
        if not folder.is_dir():
            raise DataError(f"{folder}: pseudo-mask folder does not exist")
        pseudo = []
        for record in records:
            path = folder / f"{record.stem}.png"
            if not path.is_file():
                raise DataError(f"{path}: pseudo mask missing (training image {record.image_path})")
            pseudo.append(ImageRecord(record.stem, record.image_path, path, "png"))
        return pseudo

    def _whole(self, records: list[ImageRecord], with_labels: bool = True) -> WholeImageDataset:
        return WholeImageDataset(records, self.store, self.mean, self.std, with_labels)

    def _warm(self, datasets: list[tuple[Any, bool]]) -> None:
        """Holds the records of (dataset, labels at the files' resolution) pairs in memory."""
        # Decoding once here, before DataLoader workers fork, lets them share the arrays.
        if not self.hparams.cache_images:
            return
        # One entry per image and kept map (at scale 1 the native maps are the others).
        kept = {
            (r.image_path, self.store.label_key(r.label_path, native)): (r, native)
            for dataset, native in datasets
            for r in dataset.records
        }
        held = list(kept.values())
        if not self._cache_fits(held):
            return
        for record, native in held:
            self.store.keep(record, native)

    def _cache_fits(self, held: list[tuple[ImageRecord, bool]]) -> bool:
        """Whether every process of the job can hold the records decoded (their labels at the
        file's resolution where flagged native) in under half the memory left to it (sizes
        read from the file headers); warns when not."""
        available = available_memory()
        if available is None:
            return True
        scale = self.store.scale
        sizes = {r.image_path: image_size(r.image_path) for r, _ in held}
        pixels = {path: int(np.prod(resampled_shape(size, scale))) for path, size in sizes.items()}
        labels = {
            self.store.label_key(r.label_path, native): int(np.prod(sizes[r.image_path]))
            if native
            else pixels[r.image_path]
            for r, native in held
            if r.label_path is not None
        }
        need = 3 * sum(pixels.values()) + 2 * sum(labels.values())  # RGB uint8, ids uint16
        processes = self.trainer.num_devices if self.trainer is not None else 1
        if need * processes <= available // 2:
            return True
        rank_zero_warn(
            f"{self.root}: not holding the {len(sizes)} images in memory "
            f"(cache_images): they take {need / 2**30:.1f} GiB in each of {processes} "
            f"process(es), more than half of the {available / 2**30:.1f} GiB left; "
            "every epoch reads them from disk instead"
        )
        return False

    def setup(self, stage: str) -> None:
        """Finds the images and builds the datasets ``stage`` needs."""
        if not self.records:
            self._split()
        if stage == "fit":
            train = self.train_records
            if self.pseudo_mask_dir is not None:
                train = self._pseudo_records(train)
            elif any(r.label_path is None for r in train):
                # Images of unlabelled_dirs beside labelled ones: every crop is an image only.
                train = [ImageRecord(r.stem, r.image_path) for r in train]
            hp = self.hparams
            transform = train_transform(hp.crop_size, self.mean, self.std, hp.scale_jitter)
            self.train_dataset = RandomCropDataset(train, self.store, hp.crops_per_epoch, transform)
        if stage in ("fit", "validate"):
            self.val_dataset = self._whole(self.val_records) if self.val_records else None
            # Training crops read labels at the models' resolution, validation at the files'.
            pairs = [(self.train_dataset, False), (self.val_dataset, True)]
            self._warm([(d, native) for d, native in pairs if d is not None])
        if stage == "test":
            labelled = [r for r in self.records if r.label_path is not None]
            if not labelled:
                raise DataError(
                    f"{self.root}: no labelled images to test on "
                    f"(label_source={self.hparams.label_source!r})"
                )
            self.test_dataset = self._whole(labelled)
        if stage == "predict":
            self.predict_dataset = self._whole(self.records, with_labels=False)

    def _loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise RuntimeError("call setup('fit') first")
        # Under DDP each rank takes its share of the epoch's crops.
        sampler = epoch_seed_sampler(
            self.hparams.crops_per_epoch, self.trainer, self.hparams.batch_size
        )
        return self._loader(self.train_dataset, batch_size=self.hparams.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        # No true labels (e.g. pseudo masks only): an empty list makes Lightning skip validation.
        if self.val_dataset is None:
            return []
        sampler = evaluation_sampler(self.val_dataset, self.trainer)
        return self._loader(self.val_dataset, batch_size=1, sampler=sampler)

    def test_dataloader(self) -> DataLoader:
        if self.test_dataset is None:
            raise RuntimeError("call setup('test') first")
        sampler = evaluation_sampler(self.test_dataset, self.trainer)
        return self._loader(self.test_dataset, batch_size=1, sampler=sampler)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_dataset is None:
            raise RuntimeError("call setup('predict') first")
        batch_size = self.hparams.predict_batch_size
        if batch_size == 1:
            return self._loader(self.predict_dataset, batch_size=1, collate_fn=collate_whole_images)
        # Several to a batch: images of one size together, read from their headers.
        sizes = [image_size(record.image_path) for record in self.predict_dataset.records]
        in_order = SequentialSampler(self.predict_dataset)
        batches = SameSizeBatchSampler(in_order, batch_size, drop_last=False, sizes=sizes)
        return self._loader(
            self.predict_dataset, batch_sampler=batches, collate_fn=collate_whole_images
        )
