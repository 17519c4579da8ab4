"""Stitches tile predictions of whole slides into one GeoJSON and a preview mask per slide.

Seam-free stitching by ownership: a tile keeps exactly the instances whose centroid lies in
its core (:meth:`~protoseg.datamodules.slide_predict.SlideGrid.cores`); since cores
partition the slide, each nucleus is written by one tile, whole as long as the overlap is
larger than a nucleus. Two tiles may see a nucleus in their overlap slightly differently
(different context, or a sub-pixel shift of the grid when ``mpp / base_mpp`` is not a
whole number of level-0 px per tile); only then can a nucleus whose centroid sits within a
pixel of a core boundary be kept twice or not at all.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import openslide
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from protoseg.datamodules.slide_predict import SlideGrid
from protoseg.io.geojson import instances_to_geojson
from protoseg.io.images import write_png_atomic
from protoseg.io.notices import notice_once
from protoseg.io.slide_outputs import GeoJSONStream, PreviewCanvas
from protoseg.io.wsi import open_slide
from protoseg.visualize import overlay_instances


def owned_instances(
    instances: np.ndarray, origin_xy: tuple[int, int], downsample: float, core: Sequence[float]
) -> np.ndarray:
    """Ids of a tile's instances whose centroid lies in the tile's core.

    Args:
        instances: (H, W) integer ids, 0 = background.
        origin_xy: level-0 ``(x, y)`` of the tile's top-left corner.
        downsample: level-0 px per tile px.
        core: level-0 ``(x0, y0, x1, y1)``; a centroid ``(x, y)`` is in it when
            ``x0 <= x < x1`` and ``y0 <= y < y1``.

    Returns:
        (K,) int64 ids, ascending.
    """
    flat = np.asarray(instances, np.int64).ravel()
    counts = np.bincount(flat)
    ids = np.flatnonzero(counts)
    ids = ids[ids > 0]
    if not len(ids):
        return ids
    rows, cols = np.divmod(np.arange(flat.size), instances.shape[1])
    mean_row = np.bincount(flat, weights=rows)[ids] / counts[ids]
    mean_col = np.bincount(flat, weights=cols)[ids] / counts[ids]
    # Pixel (r, c) covers level-0 [x + c * d, x + (c + 1) * d): its centre is at c + 0.5.
    x = origin_xy[0] + (mean_col + 0.5) * downsample
    y = origin_xy[1] + (mean_row + 0.5) * downsample
    inside = (core[0] <= x) & (x < core[2]) & (core[1] <= y) & (y < core[3])
    return ids[inside]


@dataclass
class _SlideOutput:
    """Outputs of a slide being written, and the tiles still to come."""

    geojson: GeoJSONStream
    preview: PreviewCanvas
    remaining: int


class SlidePredictionWriter(BasePredictionWriter):
    """For each slide of a :class:`~protoseg.datamodules.slide_predict.WSIPredictDataModule`,
    writes into ``output_dir``:

    - ``<slide>.geojson``: a FeatureCollection with one polygon per nucleus in level-0 slide
      coordinates (QuPath's "Import objects"; same features as
      :func:`~protoseg.io.geojson.instances_to_geojson`, ``instance_id`` unique in the slide);
    - ``<slide>_mask.png``: 0/255 nuclei mask, longer side at most ``preview_size`` px;
    - ``<slide>_overlay.png``: the slide's thumbnail of the same size with nuclei outlines.

    The GeoJSON grows on disk tile by tile in a hidden temporary file and is renamed when the
    slide's last tile is in; after an exception no temporary file is left and earlier files
    stay as they were. Memory holds one preview per slide being written (slides come one
    after another, so one at a time). Under DDP each rank writes the slides its
    :class:`~protoseg.datamodules.slide_predict.SlideShardSampler` gave it. Tiles the
    datamodule could not read (``skip_unreadable``) are added to its ``skipped`` list.

    Args:
        output_dir: destination folder, created if needed.
        preview_size: longer side of the mask and overlay PNGs, px.
        class_name: QuPath classification of every nucleus.
    """

    def __init__(
        self, output_dir: str | Path, preview_size: int = 2048, class_name: str = "Nucleus"
    ) -> None:
        super().__init__(write_interval="batch")
        if preview_size < 1:
            raise ValueError(f"preview_size must be >= 1, got {preview_size}")
        self.output_dir = Path(output_dir)
        self.preview_size = preview_size
        self.class_name = class_name
        self.grids: list[SlideGrid] = []
        self.written: list[Path] = []
        self._open: dict[int, _SlideOutput] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # After the datamodule's setup, and even when no slide has a tile to predict.
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        grids = getattr(trainer.datamodule, "grids", None)
        if grids is None:
            raise TypeError(
                f"{type(self).__name__} needs a slide datamodule (WSIPredictDataModule); "
                f"got {type(trainer.datamodule).__name__}"
            )
        self.grids, self.written, self._open = grids, [], {}

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not at setup: a run that fails before predicting (its checkpoint) writes nothing.
        # A slide without tissue tiles gets its (empty) files at once.
        for index in range(trainer.global_rank, len(self.grids), trainer.world_size):
            if not len(self.grids[index].tiles):
                self._start(index)
                self._finish(index)

    def _start(self, index: int) -> _SlideOutput:
        grid = self.grids[index]
        output = _SlideOutput(
            GeoJSONStream(self.output_dir / f"{grid.name}.geojson"),
            PreviewCanvas(grid.dimensions, self.preview_size),
            len(grid.tiles),
        )
        self._open[index] = output
        return output

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Sequence[dict[str, Any]],
        batch_indices: Sequence[int] | None,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        skipped = getattr(trainer.datamodule, "skipped", None)
        for message in batch.get("skipped", []):
            if message and skipped is not None:
                path, _, error = message.partition(": ")
                skipped.append({"path": path, "error": error})
        for i, item in enumerate(prediction):
            index = int(batch["slide"][i])
            output = self._open.get(index) or self._start(index)
            origin = (int(batch["x"][i]), int(batch["y"][i]))
            downsample = float(batch["downsample"][i])
            instances = np.asarray(item["instances"])
            ids = owned_instances(instances, origin, downsample, batch["core"][i].tolist())
            # Slide-wide ids: the kept instances get the next numbers of this slide.
            lookup = np.zeros(int(instances.max(initial=0)) + 1, np.int64)
            lookup[ids] = np.arange(output.geojson.count + 1, output.geojson.count + 1 + len(ids))
            kept = lookup[instances]
            features = instances_to_geojson(
                kept, offset_xy=origin, scale=downsample, class_name=self.class_name
            )["features"]
            output.geojson.write(features)
            output.preview.paste(kept, origin, downsample)
            output.remaining -= 1
            if output.remaining == 0:
                self._finish(index)

    def _finish(self, index: int) -> None:
        output = self._open.pop(index)
        grid = self.grids[index]
        labels = output.preview.labels
        mask = np.where(labels > 0, 255, 0).astype(np.uint8)
        write_png_atomic(self.output_dir / f"{grid.name}_mask.png", mask)
        size = (labels.shape[1], labels.shape[0])
        slide = open_slide(grid.path)
        try:
            thumbnail = slide.get_thumbnail(size).convert("RGB")
            thumbnail = thumbnail.resize(size, Image.Resampling.BILINEAR)
        except openslide.OpenSlideError as err:
            # A tile the datamodule skipped (skip_unreadable) is in the thumbnail too: the
            # overlay is only a picture, drawn on white; the mask and GeoJSON are complete.
            notice_once(f"thumbnail {grid.path}", f"{grid.path}: overlay drawn on white ({err})")
            thumbnail = Image.new("RGB", size, (255, 255, 255))
        finally:
            slide.close()
        overlay = overlay_instances(np.asarray(thumbnail), labels)
        write_png_atomic(self.output_dir / f"{grid.name}_overlay.png", overlay)
        self.written.append(output.geojson.commit())
        print(f"protoseg: {grid.path.name}: {output.geojson.count} nuclei -> {self.written[-1]}")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Slides cut short (limit_predict_batches) are written with the tiles they got.
        for index in list(self._open):
            grid = self.grids[index]
            warnings.warn(
                f"{grid.path}: prediction stopped with {self._open[index].remaining} of "
                f"{len(grid.tiles)} tiles missing; writing the partial slide",
                stacklevel=2,
            )
            self._finish(index)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        for output in self._open.values():
            output.geojson.abort()
        self._open = {}
