"""Writes predicted tissue class maps in a dataset's codes, with colour overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from protoseg.io.class_maps import TissueClasses, overlay_classes, write_class_map
from protoseg.io.images import image_size, read_rgb, write_png_atomic
from protoseg.io.resample import resize_nearest
from protoseg.io.slide_outputs import PreviewCanvas
from protoseg.io.wsi import open_slide


class ClassMapWriter(BasePredictionWriter):
    """For each predicted image, writes into ``output_dir``:

    - ``<stem>.png``: uint8 palette PNG of the dataset's class codes, the input's size
      (``np.array(Image.open(p))`` gives the codes, as the dataset's masks do; unsure pixels
      of a pseudo mask are ``classes.ignore_index``, 255);
    - ``<stem>_overlay.png``: the input with the class colours blended in.

    Reads the items of ``predict_step`` (``stem``, ``path``, ``classes``: (H, W) class
    indices). Every file is written to a temporary name and renamed, so a killed run leaves
    either no file or a complete one; inputs are never overwritten (an output folder that
    holds an input image is refused).

    Args:
        output_dir: destination folder, created if needed.
        classes: the dataset's classes (codes and colours).
        overlay: also write ``<stem>_overlay.png``.
    """

    def __init__(
        self, output_dir: str | Path, classes: TissueClasses, overlay: bool = True
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.classes = classes
        self.overlay = overlay

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Sequence[dict[str, Any]],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        for item in prediction:
            self.write(item["stem"], item["classes"], item.get("path"))

    def write(self, stem: str, classes: np.ndarray, image_path: str | None = None) -> Path:
        """Writes one image's files; returns the class map's path."""
        target = self.output_dir / f"{stem}.png"
        if image_path is not None:
            if target.resolve() == Path(image_path).resolve():
                raise ValueError(
                    f"{target}: would overwrite its input image; choose another output_dir"
                )
            size = image_size(image_path)
            if classes.shape != size:
                classes = resize_nearest(classes, size)
        write_class_map(target, classes, self.classes)
        if self.overlay and image_path is not None:
            picture = overlay_classes(read_rgb(image_path), classes, self.classes)
            write_png_atomic(self.output_dir / f"{stem}_overlay.png", picture)
        return target


class SlideClassMapWriter(BasePredictionWriter):
    """For each slide of a :class:`~protoseg.datamodules.slide_predict.WSIPredictDataModule`,
    stitches its tiles' class maps and writes into ``output_dir``:

    - ``<slide>.png``: palette PNG of the dataset's class codes over the whole slide, longer
      side at most ``preview_size`` px (each tile paints its core, so overlaps count once;
      tiles never predicted, glass without tissue, are ``ignore_index``);
    - ``<slide>_overlay.png``: the slide's thumbnail of that size with the class colours.

    Memory holds one map per slide being written; files are written atomically.

    Args:
        output_dir: destination folder.
        classes: the dataset's classes (codes and colours).
        preview_size: longer side of the written maps, px.
    """

    def __init__(
        self, output_dir: str | Path, classes: TissueClasses, preview_size: int = 4096
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.classes = classes
        self.preview_size = preview_size
        self._canvases: dict[int, PreviewCanvas] = {}
        self._remaining: dict[int, int] = {}
        self.grids: list[Any] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.grids = list(getattr(trainer.datamodule, "grids", []) or [])
        self._canvases, self._remaining = {}, {}

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Sequence[dict[str, Any]],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        for i, item in enumerate(prediction):
            index = int(batch["slide"][i])
            grid = self.grids[index]
            if index not in self._canvases:
                self._canvases[index] = PreviewCanvas(grid.dimensions, self.preview_size)
                self._remaining[index] = len(grid.tiles)
            origin = (int(batch["x"][i]), int(batch["y"][i]))
            downsample = float(batch["downsample"][i])
            # Class index + 1, 0 outside the tile's core: the canvas paints nonzero values.
            painted = np.asarray(item["classes"]).astype(np.int32) + 1
            x0, y0, x1, y1 = batch["core"][i].tolist()
            xs = origin[0] + (np.arange(painted.shape[1]) + 0.5) * downsample
            ys = origin[1] + (np.arange(painted.shape[0]) + 0.5) * downsample
            inside = ((y0 <= ys) & (ys < y1))[:, None] & ((x0 <= xs) & (xs < x1))[None, :]
            self._canvases[index].paste(np.where(inside, painted, 0), origin, downsample)
            self._remaining[index] -= 1
            if self._remaining[index] == 0:
                self._finish(index)

    def _finish(self, index: int) -> None:
        canvas = self._canvases.pop(index)
        self._remaining.pop(index, None)
        grid = self.grids[index]
        classes = np.where(canvas.labels > 0, canvas.labels - 1, self.classes.ignore_index)
        classes = classes.astype(np.uint8)
        write_class_map(self.output_dir / f"{grid.name}.png", classes, self.classes)
        slide = open_slide(grid.path)
        try:
            size = (classes.shape[1], classes.shape[0])
            thumbnail = slide.get_thumbnail(size).convert("RGB").resize(size)
        finally:
            slide.close()
        picture = overlay_classes(np.asarray(thumbnail), classes, self.classes)
        write_png_atomic(self.output_dir / f"{grid.name}_overlay.png", picture)
        counts = np.bincount(classes.ravel(), minlength=256)
        shares = ", ".join(
            f"{name} {counts[i] / classes.size:.1%}"
            for i, name in enumerate(self.classes.output_names)
        )
        print(f"protoseg: {grid.path.name}: {shares} -> {self.output_dir / grid.name}.png")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for index in list(self._canvases):  # slides cut short (limit_predict_batches)
            self._finish(index)
