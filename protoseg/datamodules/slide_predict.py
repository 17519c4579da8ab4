"""Whole-slide prediction: overlapping grid tiles over each slide's tissue, streamed in order.

Choices the issue leaves open, and why:

- The grid covers the whole slide: tile ``(col, row)`` starts at ``col * stride`` tile px
  (``stride = tile_size - overlap``) and the last column/row may reach past the slide's edge;
  OpenSlide returns that area transparent, read as white glass. (The SSL grid of
  :func:`~protoseg.io.wsi.tissue_tile_grid` keeps only tiles wholly inside, which would miss
  a border strip.)
- Each tile owns a *core*: its area minus half the overlap on the sides it shares with a
  neighbour. Cores tile the plane without gaps or overlaps, so a nucleus kept only by the tile
  whose core holds its centroid comes out once (:mod:`protoseg.callbacks.slide_writer`). It
  is also whole (not cut by the tile's edge) when none of its pixels lies farther than
  ``overlap / 2`` from its centroid: for round nuclei, ``overlap`` larger than a diameter
  (the default 64 px at 0.25 µm/px is 16 µm).
- Tissue is detected on a thumbnail (:func:`~protoseg.io.wsi.tissue_mask`) and a tile is
  predicted when its *core* holds tissue (share > ``min_tissue``): a nucleus centred on
  glass-only cores is lost, one centred on tissue never is.
- Multi-GPU (DDP): whole slides go to ranks round-robin (slide ``i`` to rank
  ``i % world_size``, :class:`SlideShardSampler`), so each rank streams and writes its own
  slides' files and no tile is predicted twice.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import openslide
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from protoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from protoseg.datamodules.wsi import find_slides
from protoseg.io.errors import DataError, one_line
from protoseg.io.wsi import open_slide, read_region_at_mpp, slide_mpp, tissue_fractions, tissue_mask


@dataclass(frozen=True)
class SlideGrid:
    """One slide's tile grid; coordinates are level-0 px unless said otherwise.

    Attributes:
        path: the slide file.
        name: output stem (the file's stem), unique among the slides predicted together.
        base_mpp: level-0 µm/px.
        dimensions: level-0 ``(width, height)``.
        downsample: level-0 px per tile px (``mpp / base_mpp``).
        tile_size: tile side, tile px.
        overlap: px shared by neighbouring tiles, tile px.
        grid_shape: ``(rows, cols)`` of the full grid, tissue or not.
        tiles: (N, 2) int64 ``(col, row)`` of the tiles to predict, row by row.
    """

    path: Path
    name: str
    base_mpp: float
    dimensions: tuple[int, int]
    downsample: float
    tile_size: int
    overlap: int
    grid_shape: tuple[int, int]
    tiles: np.ndarray

    def _starts(self, index: np.ndarray) -> np.ndarray:
        return np.floor(index * (self.tile_size - self.overlap) * self.downsample).astype(np.int64)

    def origins(self, tiles: np.ndarray) -> np.ndarray:
        """(N, 2) int64 level-0 ``(x, y)`` of the top-left corners of (N, 2) ``(col, row)``."""
        return self._starts(np.asarray(tiles, np.int64))

    def cores(self, tiles: np.ndarray) -> np.ndarray:
        """(N, 4) float64 level-0 ``(x0, y0, x1, y1)`` cores; ±inf beyond the grid's ends.

        The boundary between column ``k - 1`` and ``k`` is column ``k``'s corner plus half the
        overlap, the same number for both tiles, so the cores partition the plane.
        """
        tiles = np.asarray(tiles, np.int64).reshape(-1, 2)
        half = self.overlap / 2 * self.downsample
        lower = self._starts(tiles) + half
        upper = self._starts(tiles + 1) + half
        last = np.asarray(self.grid_shape[::-1]) - 1  # (cols - 1, rows - 1)
        lower = np.where(tiles == 0, -np.inf, lower)
        upper = np.where(tiles == last, np.inf, upper)
        return np.concatenate([lower, upper], axis=1)


def _grid_count(length: float, tile_size: int, stride: int) -> int:
    """Tiles of ``tile_size``, ``stride`` apart, needed to cover ``length`` (tile px)."""
    return 1 if length <= tile_size else math.ceil((length - tile_size) / stride) + 1


def slide_grid(
    path: Path,
    mpp: float,
    tile_size: int,
    overlap: int,
    min_tissue: float | None = 0.0,
    thumbnail_size: int = 1024,
    default_mpp: float | None = None,
) -> SlideGrid:
    """Opens a slide once and lists the grid tiles whose core holds tissue.

    Args:
        path: slide file.
        mpp: prediction resolution, µm/px.
        tile_size: tile side at ``mpp``, px.
        overlap: px shared by neighbouring tiles at ``mpp``.
        min_tissue: a tile is kept when the tissue share of its core (clipped to the slide)
            exceeds this; None keeps every tile (no tissue detection).
        thumbnail_size: longer side of the tissue-mask thumbnail, px.
        default_mpp: level-0 µm/px of a slide that states none.
    """
    slide = open_slide(path)
    try:
        base_mpp = slide_mpp(slide, default_mpp)
        width, height = slide.dimensions
        mask = tissue_mask(slide, thumbnail_size)[0] if min_tissue is not None else None
    finally:
        slide.close()
    downsample = mpp / base_mpp
    stride = tile_size - overlap
    cols = _grid_count(width / downsample, tile_size, stride)
    rows = _grid_count(height / downsample, tile_size, stride)
    tiles = np.stack(np.meshgrid(np.arange(cols), np.arange(rows)), axis=-1).reshape(-1, 2)
    grid = SlideGrid(
        path, path.stem, base_mpp, (width, height), downsample, tile_size, overlap, (rows, cols),
        tiles,
    )  # fmt: skip
    if mask is not None:
        cores = grid.cores(tiles)
        boxes = np.clip(cores, 0, [width, height, width, height]) * (mask.shape[1] / width)
        keep = tissue_fractions(mask, boxes) > min_tissue
        grid = dataclasses.replace(grid, tiles=tiles[keep])
    return grid


class SlideTileDataset(Dataset):
    """Every listed tile of every slide, slide after slide, row by row.

    Items: ``image`` (3, tile_size, tile_size) float32 normalised ``(x / 255 - mean) / std``,
    ``stem`` ("<slide>_<x>_<y>"), ``path`` (the slide), ``slide`` (index), ``x``, ``y``
    (level-0 corner), ``downsample`` (level-0 px per tile px), ``core`` (4,) float64
    level-0 ``(x0, y0, x1, y1)`` and ``skipped`` (empty, or with ``skip_unreadable`` the
    message of a tile that could not be read and is given as white glass instead). Slides
    are opened on first use in each process (each DataLoader worker reads its own tiles) and
    never pickled.
    """

    def __init__(
        self,
        grids: list[SlideGrid],
        mpp: float,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        skip_unreadable: bool = False,
    ) -> None:
        self.grids = grids
        self.mpp = mpp
        self.mean, self.std = mean, std
        self.skip_unreadable = skip_unreadable
        self.ends = np.cumsum([len(g.tiles) for g in grids])
        self._handles: dict[int, openslide.OpenSlide] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}

    def slide_range(self, index: int) -> range:
        """Dataset indices of slide ``index``'s tiles."""
        return range(int(self.ends[index - 1]) if index else 0, int(self.ends[index]))

    def _slide(self, index: int) -> openslide.OpenSlide:
        if self._pid != os.getpid():  # a forked worker: the parent's handles are not ours
            self._handles, self._pid = {}, os.getpid()
        if index not in self._handles:
            self._handles[index] = open_slide(self.grids[index].path)
        return self._handles[index]

    def close(self) -> None:
        """Closes the slides this process opened."""
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __getitem__(self, item: int) -> dict[str, Any]:
        index = int(np.searchsorted(self.ends, item, side="right"))
        grid = self.grids[index]
        tile = grid.tiles[item - self.slide_range(index).start][None]
        x, y = (int(v) for v in grid.origins(tile)[0])
        slide = self._slide(index)
        skipped = ""
        try:
            rgb = read_region_at_mpp(slide, x, y, grid.tile_size, self.mpp, grid.base_mpp)
        except DataError as error:
            if not self.skip_unreadable:
                raise
            # OpenSlide keeps an error for good: the next tile reopens the slide.
            self._handles.pop(index).close()
            rgb = np.full((grid.tile_size, grid.tile_size, 3), 255, np.uint8)
            skipped = one_line(error)
        return {
            "image": normalize(rgb, self.mean, self.std),
            "stem": f"{grid.name}_{x}_{y}",
            "path": str(grid.path),
            "slide": index,
            "x": x,
            "y": y,
            "downsample": grid.downsample,
            "core": torch.from_numpy(grid.cores(tile)[0]),
            "skipped": skipped,
        }


class SlideShardSampler(DistributedSampler):
    """Whole slides per rank, in order: slide ``i`` goes to rank ``i % num_replicas``.

    A :class:`DistributedSampler` so that Lightning keeps it under DDP instead of spreading
    every slide's tiles over the ranks; the rank and world size default to the process
    group's (1 process when there is none).
    """

    def __init__(
        self, dataset: SlideTileDataset, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        slides = range(rank, len(dataset.grids), num_replicas)
        self.indices = [i for s in slides for i in dataset.slide_range(s)]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class WSIPredictDataModule(L.LightningDataModule):
    """Tiles of whole slides for ``protoseg predict`` (no training, validation or test).

    Batches: ``image`` float32 (B, 3, tile_size, tile_size) normalised like the training
    datamodules, ``stem`` / ``path`` lists (what every stage's ``predict_step`` passes on)
    and tile metadata ``slide`` int64 (B,), ``x``, ``y`` int64 (B,) level-0 corners,
    ``downsample`` float64 (B,) and ``core`` float64 (B, 4) (see :class:`SlideTileDataset`).
    Only thumbnails and tile coordinates are held; tiles are read one by one.
    :class:`~protoseg.callbacks.slide_writer.SlidePredictionWriter` stitches the results.

    Args:
        slides: slide files and/or folders of slides (any format OpenSlide reads).
        mpp: prediction resolution, µm/px: the one the model was trained at (MoNuSeg's
            40x images: 0.25).
        tile_size: tile side at ``mpp``, px.
        overlap: px shared by neighbouring tiles; larger than the largest nucleus.
        batch_size: tiles per batch.
        num_workers: DataLoader processes reading tiles.
        min_tissue: tiles whose core has a tissue share above this are predicted; None
            predicts every tile.
        thumbnail_size: longer side of the tissue-mask thumbnail, px.
        default_mpp: level-0 µm/px of slides that state none.
        mean: per-channel normalisation mean, on [0, 1] RGB.
        std: per-channel normalisation std.
        skip_unreadable: a slide OpenSlide cannot open is left out, and a tile it cannot
            decode is predicted as white glass, both listed (the writer prints and records
            them) instead of stopping the run.
    """

    def __init__(
        self,
        slides: list[str],
        mpp: float = 0.25,
        tile_size: int = 512,
        overlap: int = 64,
        batch_size: int = 4,
        num_workers: int = 2,
        min_tissue: float | None = 0.0,
        thumbnail_size: int = 1024,
        default_mpp: float | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        skip_unreadable: bool = False,
    ) -> None:
        super().__init__()
        if tile_size < 1 or batch_size < 1 or thumbnail_size < 1:
            raise ValueError("tile_size, batch_size and thumbnail_size must be >= 1")
        if not 0 <= overlap < tile_size or overlap % 2:
            raise ValueError(f"overlap must be even and in [0, tile_size), got {overlap}")
        if mpp <= 0 or (default_mpp is not None and default_mpp <= 0):
            raise ValueError(f"mpp and default_mpp must be > 0, got {mpp}, {default_mpp}")
        if min_tissue is not None and not 0.0 <= min_tissue < 1.0:
            raise ValueError(f"min_tissue must be in [0, 1) or None, got {min_tissue}")
        # Not logged beside the module's: its tile_size (slide tiles) and the heads' tile_size
        # (inference tiles) differ, and Lightning refuses to merge a key of two values. The
        # CLI's config.yaml in the log folder keeps them.
        self.save_hyperparameters(logger=False)
        self.mean, self.std = tuple(mean), tuple(std)
        self.grids: list[SlideGrid] = []
        self.predict_dataset: SlideTileDataset | None = None
        self.skipped: list[dict[str, str]] = []

    def setup(self, stage: str) -> None:
        """Indexes the slides' tissue tiles (once) for ``predict``."""
        if stage != "predict":
            raise ValueError(f"{type(self).__name__} only predicts; got stage {stage!r}")
        hp = self.hparams
        if not self.grids:
            paths = find_slides(hp.slides)
            names: dict[str, Path] = {}
            for path in paths:
                if path.stem in names:
                    raise DataError(f"{path}: same output name as {names[path.stem]}")
                names[path.stem] = path
            self.skipped = []
            for path in paths:
                try:
                    grid = slide_grid(
                        path, hp.mpp, hp.tile_size, hp.overlap, hp.min_tissue,
                        hp.thumbnail_size, hp.default_mpp,
                    )  # fmt: skip
                except DataError as error:
                    if not hp.skip_unreadable:
                        raise
                    problem = one_line(error).removeprefix(f"{path}: ")
                    self.skipped.append({"path": str(path), "error": problem})
                    continue
                self.grids.append(grid)
        self.predict_dataset = SlideTileDataset(
            self.grids, hp.mpp, self.mean, self.std, hp.skip_unreadable
        )

    def predict_dataloader(self) -> DataLoader:
        if self.predict_dataset is None:
            raise RuntimeError("call setup('predict') first")
        return DataLoader(
            self.predict_dataset,
            batch_size=self.hparams.batch_size,
            sampler=SlideShardSampler(self.predict_dataset),
            num_workers=self.hparams.num_workers,
        )

    def teardown(self, stage: str) -> None:
        if self.predict_dataset is not None:
            self.predict_dataset.close()
