"""Writes class activation maps as arrays and as pictures a person can look at."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback

from protoseg.io.images import read_rgb, write_npy_atomic, write_png_atomic
from protoseg.visualize import cam_picture


class CamWriter(Callback):
    """For each predicted item holding ``cams`` (K, H, W), writes into ``cam_dir``:

    - ``<stem>.npy``: the maps, float16 in [0, 1] (``np.load`` reads them);
    - ``<stem>.png``: the image, then each class's map blended over it (blue 0, red 1).

    Both atomically (temporary file, then rename). Add it to ``trainer.callbacks`` of a
    ``protoseg predict`` with :class:`~protoseg.lightning_modules.cam_sam.CamSamPseudoMaskModule`.

    Args:
        cam_dir: destination folder (not the folder of the pseudo masks: both use ``<stem>``);
            None: ``<trainer.default_root_dir>/cams``.
        pictures: also write the pictures.
    """

    def __init__(self, cam_dir: str | None = None, pictures: bool = True) -> None:
        self.cam_dir = None if cam_dir is None else Path(cam_dir)
        self.pictures = pictures

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.cam_dir is None:
            self.cam_dir = Path(trainer.default_root_dir) / "cams"

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Sequence[dict[str, Any]] | Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for item in outputs or []:
            if isinstance(item, dict) and "cams" in item:
                self.write(item["stem"], np.asarray(item["cams"]), item.get("path"))

    def write(self, stem: str, cams: np.ndarray, image_path: str | None = None) -> Path:
        """Writes one image's maps (and picture, given the image); returns the array's path."""
        if self.cam_dir is None:
            raise RuntimeError("CamWriter has no cam_dir: give one, or run it in a Trainer")
        target = self.cam_dir / f"{stem}.npy"
        write_npy_atomic(target, cams.astype(np.float16))
        if self.pictures and image_path is not None:
            picture = cam_picture(read_rgb(image_path), cams.astype(np.float32))
            write_png_atomic(self.cam_dir / f"{stem}.png", picture)
        return target
