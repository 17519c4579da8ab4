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
