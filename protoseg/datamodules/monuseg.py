"""MoNuSeg-layout data: random training crops, whole images for validation, test and predict.

A root holds ``images/*.tif|*.tiff|*.png|*.jpg|*.jpeg`` and, optionally,
``annotations_xml/<stem>.xml`` (Aperio polygons) and/or ``labels/<stem>.png`` (instance maps),
as the MoNuSeg release does (:mod:`protoseg.data.records`). Images at another resolution than
the models' are resampled to it as they are read (``image_mpp``, given or, with ``auto``, read
from the nuclei's size).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from protoseg.data.datasets import (
    RandomCropDataset,
    WholeImageDataset,
    collate_whole_images,
    requested_crop_targets,
)
from protoseg.data.records import ImageRecord, find_records, find_unlabelled, split_stems
from protoseg.data.samplers import SameSizeBatchSampler, epoch_seed_sampler, evaluation_sampler
from protoseg.data.store import ImageStore
from protoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform
from protoseg.io.errors import DataError, NoLabelsError, one_line
from protoseg.io.images import check_image, image_size, read_rgb
from protoseg.io.resample import resampled_shape
from protoseg.memory import available_memory
from protoseg.modules.scale import estimate_mpp

# Without true labels val_dataloader returns [] on purpose (no validation); Lightning warns
# about every such empty list, which reads as a fault on a folder of your own images.
warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")

# The names this module held before the data core was split out of it (protoseg.data).
__all__ = [
    "ImageRecord",
    "ImageStore",
    "MoNuSegDataModule",
    "WholeImageDataset",
    "find_records",
    "find_unlabelled",
    "split_stems",
]


SCALE_SAMPLE = 16
"""Images ``image_mpp: auto`` reads (spread over the root): the median of 16 of MoNuSeg's
training images lies within 0.91-1.14 times the 30 images' in 95% of draws."""


@rank_zero_only
def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class MoNuSegDataModule(L.LightningDataModule):
    """MoNuSeg-layout root: training crops, whole-image validation, test and prediction.

    Training batches: ``image`` float32 (B, 3, h, w) normalised, ``target`` int64 (B, h, w)
    with :mod:`~protoseg.data.targets` classes and ``instances`` int64 (B, h, w)
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
            neighbour would have blocky outlines, which lower AJI). ``auto`` (the shipped
            configs') reads it from the size of the nuclei in up to
            :data:`SCALE_SAMPLE` of the images (:func:`~protoseg.modules.scale.estimate_mpp`)
            and says on stderr what it read; an estimate within
            :data:`~protoseg.modules.scale.TOLERANCE` of ``mpp`` reads them as they are.
            The post-processing's pixel settings (peak spacing, opening, minimum areas)
            then hold at ``mpp``, where the images are split.
        mpp: µm per pixel the stage's models work at (MoNuSeg's 40x: about 0.25).
        unlabelled_dirs: folders of further images (no annotations) that train beside the
            root's, e.g. unannotated tiles for a label-free chain whose labelled root only
            scores; they share ``image_mpp`` and need stems unique across the folders.
        skip_unreadable: ``predict`` leaves out images that cannot be read (listed in
            ``skipped``, which the prediction writer prints and records) instead of
            stopping. Either way every image is decoded once before the first is predicted,
            so an unreadable one stops the run before anything is written.
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
        image_mpp: float | Literal["auto"] | None = None,
        mpp: float = 0.25,
        unlabelled_dirs: list[str] | None = None,
        skip_unreadable: bool = False,
    ) -> None:
        super().__init__()
        if image_mpp == "auto":
            given = None
        elif image_mpp is None or isinstance(image_mpp, (int, float)):
            given = image_mpp
        else:
            raise ValueError(f"image_mpp must be a number, 'auto' or None, got {image_mpp!r}")
        if mpp <= 0 or (given is not None and given <= 0):
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
        self.store = ImageStore(1.0 if given is None else given / mpp)
        self.records: list[ImageRecord] = []
        self.train_records: list[ImageRecord] = []
        self.val_records: list[ImageRecord] = []
        self.train_dataset: RandomCropDataset | None = None
        self.val_dataset: WholeImageDataset | None = None
        self.test_dataset: WholeImageDataset | None = None
        self.predict_dataset: WholeImageDataset | None = None
        self.skipped: list[dict[str, str]] = []

    @property
    def label_sources(self) -> dict[str, str | None]:
        """Where each image's true labels come from: ``"xml"``, ``"png"`` or None."""
        return {r.stem: r.label_format for r in self.records}

    def _split(self) -> None:
        hp = self.hparams
        records = find_records(self.root, hp.label_source)
        by_stem = {r.stem: r for r in records}
        if any(r.label_path is not None for r in records):
            try:
                train, val = split_stems(list(by_stem), hp.val_fraction, hp.split_seed)
            except ValueError as error:  # too few images for the split
                raise DataError(f"{self.root}: {error}") from None
        else:
            train, val = sorted(by_stem), []
        unlabelled = find_unlabelled(hp.unlabelled_dirs or [], set(by_stem))
        self.records = records + unlabelled
        self.train_records = [by_stem[s] for s in train] + unlabelled
        self.val_records = [by_stem[s] for s in val]
        if hp.image_mpp == "auto":
            self.store = ImageStore(self._estimated_scale())

    def _estimated_scale(self) -> float:
        """The factor to resize the images by, read from up to :data:`SCALE_SAMPLE` of them
        spread over the records; says on stderr what it read."""
        records = self.records
        step = max(1, -(-len(records) // SCALE_SAMPLE))
        try:
            estimate = estimate_mpp(read_rgb(r.image_path) for r in records[::step])
        except ValueError as error:
            raise DataError(f"{self.root}: image_mpp auto: {error}; set image_mpp") from error
        _say(f"protoseg: {self.root}: {estimate.describe(self.hparams.mpp)}")
        return estimate.resize_factor(self.hparams.mpp)

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
            self._check_crop_fits(train)
            transform = train_transform(hp.crop_size, self.mean, self.std, hp.scale_jitter)
            # What the module asks each crop to carry (e.g. the centre detector's targets),
            # built in the loader's workers.
            self.train_dataset = RandomCropDataset(
                train,
                self.store,
                hp.crops_per_epoch,
                transform,
                requested_crop_targets(self.trainer),
            )
        if stage == "validate" and not self.val_records:
            # Before the checkpoint is read: the reason is the one line the command prints.
            raise NoLabelsError(
                f"{self.root}: no labelled images to validate on (images/ without "
                f"annotations_xml/ or labels/, or label_source={self.hparams.label_source!r})"
            )
        if stage in ("fit", "validate"):
            self.val_dataset = self._whole(self.val_records) if self.val_records else None
            # Training crops read labels at the models' resolution, validation at the files'.
            pairs = [(self.train_dataset, False), (self.val_dataset, True)]
            self._warm([(d, native) for d, native in pairs if d is not None])
        if stage == "test":
            labelled = [r for r in self.records if r.label_path is not None]
            if not labelled:
                raise NoLabelsError(
                    f"{self.root}: no labelled images to test on "
                    f"(label_source={self.hparams.label_source!r})"
                )
            self.test_dataset = self._whole(labelled)
        if stage == "predict":
            self.predict_dataset = self._whole(self._readable(self.records), with_labels=False)

    def _check_crop_fits(self, records: list[ImageRecord]) -> None:
        """Refuses training images smaller than a crop: their crops would be mostly white
        padding (a 64 px image in a 128 px crop: 75%)."""
        crop = self.hparams.crop_size
        for record in records:
            size = resampled_shape(image_size(record.image_path), self.store.scale)
            if min(size) < crop:
                raise DataError(
                    f"{record.image_path}: {size[1]} x {size[0]} px (at mpp), smaller than "
                    f"--data.crop_size {crop}: its crops would be mostly padding; lower "
                    "crop_size or leave the image out"
                )

    def _readable(self, records: list[ImageRecord]) -> list[ImageRecord]:
        """The records whose image decodes; the others raise, or with ``skip_unreadable``
        are left out and listed in :attr:`skipped`."""
        kept: list[ImageRecord] = []
        self.skipped = []
        for record in records:
            try:
                check_image(record.image_path)
            except DataError as error:
                if not self.hparams.skip_unreadable:
                    raise
                problem = one_line(error).removeprefix(f"{record.image_path}: ")
                self.skipped.append({"path": str(record.image_path), "error": problem})
                continue
            kept.append(record)
        if not kept:
            raise DataError(f"{self.root}: no readable image to predict")
        return kept

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
