"""Random tissue tiles from whole-slide images, for self-supervised pretraining."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import openslide
import torch
from torch.utils.data import DataLoader, Dataset

from protoseg.data.samplers import epoch_seed_sampler
from protoseg.io.errors import DataError
from protoseg.io.wsi import open_slide, read_region_at_mpp, slide_mpp, tissue_mask, tissue_tile_grid

SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".svslide",
    ".bif",
    ".vms",
    ".vmu",
)


def find_slides(entries: Sequence[str | Path]) -> list[Path]:
    """Slide files from a list of files and folders, in the order given.

    A folder contributes every file in it (not in subfolders) whose suffix is one of
    :data:`SLIDE_SUFFIXES`, sorted by name; a file is taken as is.

    Raises:
        DataError: a path does not exist or a folder holds no slide.
    """
    slides: list[Path] = []
    for entry in map(Path, entries):
        if entry.is_dir():
            found = sorted(
                p
                for p in entry.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SLIDE_SUFFIXES
            )
            if not found:
                raise DataError(f"{entry}: no slides ({', '.join(SLIDE_SUFFIXES)})")
            slides.extend(found)
        elif entry.is_file():
            slides.append(entry)
        else:
            raise DataError(f"{entry}: slide file or folder does not exist")
    return slides


@dataclass(frozen=True)
class SlideTiles:
    """A slide's level-0 resolution and size and its candidate tile corners (N, 2) (x, y)."""

    path: Path
    base_mpp: float
    dimensions: tuple[int, int]
    corners: np.ndarray


def index_slide(
    path: Path,
    tile_size: int,
    mpp: float,
    min_tissue: float,
    thumbnail_size: int,
    default_mpp: float | None = None,
) -> SlideTiles:
    """Opens a slide once and lists the corners of its tissue tiles (coordinates only)."""
    slide = open_slide(path)
    try:
        base_mpp = slide_mpp(slide, default_mpp)
        mask = tissue_mask(slide, thumbnail_size)[0] if min_tissue > 0 else None
        corners = tissue_tile_grid(
            slide, tile_size, mpp, base_mpp, min_tissue=min_tissue, mask=mask
        )
        dimensions = slide.dimensions
    finally:
        slide.close()
    return SlideTiles(path, base_mpp, dimensions, np.asarray(corners, np.int64).reshape(-1, 2))


class WSITileDataset(Dataset):
    """Tiles drawn uniformly over every (slide, tissue tile) candidate; item ``seed`` picks
    the candidate and a jitter of up to half a tile, so tiles are not always on the grid.

    Items: ``image`` (3, tile_size, tile_size) float32 RGB in [0, 1], not normalised.
    Feed it seeds from :class:`~protoseg.data.samplers.EpochSeedSampler`. Slides
    are opened on first use in each process and kept open there; the handles are never
    pickled or shared with forked workers.
    """

    def __init__(self, slides: list[SlideTiles], tile_size: int, mpp: float, tiles: int) -> None:
        self.slides = slides
        self.tile_size = tile_size
        self.mpp = mpp
        self.tiles = tiles
        # Candidate k belongs to slide i where ends[i - 1] <= k < ends[i].
        self.ends = np.cumsum([len(s.corners) for s in slides])
        self._handles: dict[int, openslide.OpenSlide] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.tiles

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}

    def _slide(self, index: int) -> openslide.OpenSlide:
        if self._pid != os.getpid():  # a forked worker: the parent's handles are not ours
            self._handles, self._pid = {}, os.getpid()
        if index not in self._handles:
            self._handles[index] = open_slide(self.slides[index].path)
        return self._handles[index]

    def close(self) -> None:
        """Closes the slides this process opened."""
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __getitem__(self, seed: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(seed)
        candidate = int(rng.integers(self.ends[-1]))
        index = int(np.searchsorted(self.ends, candidate, side="right"))
        tiles = self.slides[index]
        x, y = tiles.corners[candidate - (self.ends[index - 1] if index else 0)]
        side = self.tile_size * self.mpp / tiles.base_mpp  # level-0 px
        jitter = rng.integers(-int(side // 2), int(side // 2) + 1, size=2)
        # Kept inside the slide, like the grid tiles.
        x = int(np.clip(x + jitter[0], 0, max(0, int(tiles.dimensions[0] - side))))
        y = int(np.clip(y + jitter[1], 0, max(0, int(tiles.dimensions[1] - side))))
        rgb = read_region_at_mpp(self._slide(index), x, y, self.tile_size, self.mpp, tiles.base_mpp)
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        return {"image": image.float().div_(255.0)}


class WSITileDataModule(L.LightningDataModule):
    """Random tissue tiles at a fixed resolution from whole-slide images (training only).

    Batches: ``image`` float32 (B, 3, tile_size, tile_size) RGB in [0, 1], not normalised
    (augmentation and normalisation happen on the device, in the model). Setup opens each
    slide once to find its tissue tiles on a thumbnail mask (a regular grid, tiles with at
    least ``min_tissue`` tissue), then closes it. Tiles are reproducible: they depend only
    on ``torch.initial_seed()`` (set by ``seed_everything``), the epoch and the position
    in it, whatever ``num_workers``.

    Args:
        slides: slide files and/or folders of slides (see :func:`find_slides`).
        mpp: target resolution, µm/px (0.5 is about 20x, 0.25 about 40x).
        tile_size: tile side at ``mpp``, px.
        tiles_per_epoch: training tiles per epoch.
        batch_size: training batch size.
        num_workers: DataLoader processes (kept alive between epochs when > 0).
        min_tissue: smallest tissue share of a candidate tile (0: every grid tile).
        thumbnail_size: longer side of the thumbnail the tissue mask is computed on, px.
        default_mpp: level-0 µm/px of slides that do not state their resolution.
    """

    def __init__(
        self,
        slides: list[str],
        mpp: float = 0.5,
        tile_size: int = 224,
        tiles_per_epoch: int = 1024,
        batch_size: int = 32,
        num_workers: int = 2,
        min_tissue: float = 0.5,
        thumbnail_size: int = 1024,
        default_mpp: float | None = None,
    ) -> None:
        super().__init__()
        for name, value in [
            ("tile_size", tile_size),
            ("tiles_per_epoch", tiles_per_epoch),
            ("batch_size", batch_size),
            ("thumbnail_size", thumbnail_size),
        ]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if mpp <= 0 or (default_mpp is not None and default_mpp <= 0):
            raise ValueError(f"mpp and default_mpp must be > 0, got {mpp}, {default_mpp}")
        if not 0.0 <= min_tissue <= 1.0:
            raise ValueError(f"min_tissue must be in [0, 1], got {min_tissue}")
        # Not logged beside the module's: its tile_size (slide tiles) and the heads' tile_size
        # (inference tiles) differ, and Lightning refuses to merge a key of two values. The
        # CLI's config.yaml in the log folder keeps them.
        self.save_hyperparameters(logger=False)
        self.slide_tiles: list[SlideTiles] = []
        self.train_dataset: WSITileDataset | None = None

    def setup(self, stage: str) -> None:
        """Indexes the slides' tissue tiles (once) and builds the training dataset."""
        hp = self.hparams
        if not self.slide_tiles:
            self.slide_tiles = [
                index_slide(
                    path, hp.tile_size, hp.mpp, hp.min_tissue, hp.thumbnail_size, hp.default_mpp
                )
                for path in find_slides(hp.slides)
            ]
        if not any(len(s.corners) for s in self.slide_tiles):
            names = ", ".join(str(s.path) for s in self.slide_tiles)
            raise DataError(
                f"{names}: no {hp.tile_size} px tile at {hp.mpp} µm/px with tissue share >= "
                f"{hp.min_tissue} (lower min_tissue, or check the slides' resolution)"
            )
        if stage == "fit":
            self.train_dataset = WSITileDataset(
                self.slide_tiles, hp.tile_size, hp.mpp, hp.tiles_per_epoch
            )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise RuntimeError("call setup('fit') first")
        # Under DDP each rank takes its share of the epoch's tiles.
        sampler = epoch_seed_sampler(
            self.hparams.tiles_per_epoch, self.trainer, self.hparams.batch_size
        )
        return DataLoader(
            self.train_dataset,
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def teardown(self, stage: str) -> None:
        if self.train_dataset is not None:
            self.train_dataset.close()
