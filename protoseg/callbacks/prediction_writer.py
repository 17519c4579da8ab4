"""Writes predicted nuclei as instance maps, overlays and QuPath-ready GeoJSON."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from protoseg.io.geojson import instances_to_geojson, write_geojson
from protoseg.io.images import image_size, read_rgb, write_png_atomic
from protoseg.io.resample import resize_nearest
from protoseg.visualize import overlay_instances


class InstancePredictionWriter(BasePredictionWriter):
    """For each predicted image, writes into ``output_dir``:

    - ``<stem>.png``: uint16 instance map of the input's full size, 0 = background;
    - ``<stem>_overlay.png``: the input with predicted outlines;
    - ``<stem>.geojson``: a FeatureCollection with one polygon per nucleus (QuPath imports it);
    - ``binary/<stem>.png``: the 0/255 nuclei mask, for stages whose predictions carry one
      (label-free stages writing pseudo masks).

    A map predicted at another resolution than its input's (a datamodule's ``image_mpp``) is
    resized back to the input file's size by nearest neighbour before anything is written.
    Every file is written to a temporary name and renamed, so a killed run leaves either the
    previous file or the complete new one. Each rank writes the images of its own batches.

    Args:
        output_dir: destination folder, created if needed.
        overlay: also write ``<stem>_overlay.png``.
        geojson: also write ``<stem>.geojson``.
        binary: also write ``binary/<stem>.png`` when a prediction has a ``binary`` mask.
    """

    def __init__(
        self,
        output_dir: str | Path,
        overlay: bool = True,
        geojson: bool = True,
        binary: bool = True,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.overlay = overlay
        self.geojson = geojson
        self.binary = binary

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
            self.write(item["stem"], item["instances"], item.get("path"), item.get("binary"))

    def write(
        self,
        stem: str,
        instances: np.ndarray,
        image_path: str | None = None,
        binary: np.ndarray | None = None,
    ) -> None:
        """Writes the files of one image; ``image_path`` gives the size to write at and is read
        back for the overlay."""
        if image_path is not None:
            size = image_size(image_path)
            if instances.shape != size:
                _check_resampled(stem, instances.shape, size)
                instances = resize_nearest(instances, size)
                binary = None if binary is None else resize_nearest(binary, size)
        if instances.max(initial=0) > np.iinfo(np.uint16).max:
            raise ValueError(f"{stem}: {instances.max()} instances do not fit a uint16 PNG")
        write_png_atomic(self.output_dir / f"{stem}.png", instances.astype(np.uint16))
        if self.overlay and image_path is not None:
            picture = overlay_instances(read_rgb(image_path), instances)
            write_png_atomic(self.output_dir / f"{stem}_overlay.png", picture)
        if self.geojson:
            write_geojson(self.output_dir / f"{stem}.geojson", instances_to_geojson(instances))
        if self.binary and binary is not None:
            mask = np.where(binary.astype(bool), 255, 0).astype(np.uint8)
            write_png_atomic(self.output_dir / "binary" / f"{stem}.png", mask)


def _check_resampled(stem: str, shape: tuple[int, ...], size: tuple[int, int]) -> None:
    """A map of another size than its input must be the input resampled, not cut or padded."""
    ratio = shape[0] / size[0]
    if len(shape) != 2 or abs(shape[1] - size[1] * ratio) > 1.0:
        raise ValueError(
            f"{stem}: predicted map {tuple(shape)} is not the input {size} at one scale"
        )
