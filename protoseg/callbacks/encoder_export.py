"""Writes the pretrained encoder of a self-supervised stage when training ends."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info


class EncoderExport(Callback):
    """On fit end, rank 0 writes the module's encoder to ``path`` (the stage's ``encoder_ckpt``).

    The file, ``{"backbone": name, "state_dict": ...}``, is written atomically by the
    module's ``export_encoder`` (e.g. :meth:`SSLModule.export_encoder`), and loads by path
    into :class:`~protoseg.modules.backbones.TimmBackbone` (``weights=``) and
    :class:`~protoseg.modules.networks.UNet` (``encoder_weights=``).

    Args:
        path: destination file, e.g. ``runs/ssl_simclr/encoder.ckpt``; None:
            ``<trainer.default_root_dir>/encoder.ckpt``, so that runs that differ only in
            ``--trainer.default_root_dir`` (a sweep's seeds) do not overwrite each other's.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "export_encoder", None)):
            raise TypeError(f"EncoderExport: {type(pl_module).__name__} has no export_encoder()")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self.path or Path(trainer.default_root_dir) / "encoder.ckpt"
        if trainer.is_global_zero:
            written = pl_module.export_encoder(path)
            rank_zero_info(f"protoseg: encoder written to {Path(written).resolve()}")
        # Ranks leave fit together, so that nobody reads the file before it exists.
        trainer.strategy.barrier("encoder_export")
