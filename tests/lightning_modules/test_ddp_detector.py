"""Two CPU processes (gloo DDP) score the centre detector as one process does: each rank
validates its share of the images (no duplicate), and the detection counts are summed
across ranks before precision, recall and F1."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from conftest import cpu_trainer

from protoseg.datamodules.monuseg import MoNuSegDataModule
from protoseg.lightning_modules.centre_detector import CentreDetectorModule
from protoseg.modules.networks import UNet


def _trainer(devices: int) -> L.Trainer:
    # 4 steps; the fit does not validate
    return cpu_trainer(devices, max_steps=4, check_val_every_n_epoch=100)


# ~30 s of CPU (two spawned processes import torch and Lightning).
def test_two_process_validation_scores_as_one_process(
    tmp_path: Path, make_monuseg_root: object
) -> None:
    root = make_monuseg_root(tmp_path / "monuseg", n_images=5)  # type: ignore[operator]
    data = MoNuSegDataModule(
        str(root), val_fraction=0.6, crop_size=32, crops_per_epoch=8, batch_size=4, num_workers=0
    )
    L.seed_everything(0)
    net = UNet("resnet18", num_classes=3, decoder_channels=(16, 16, 8, 8, 8))
    # a low threshold, so that the barely trained heatmap's peaks are detections
    model = CentreDetectorModule(net, tile_size=64, tile_overlap=16, peak_threshold=0.05)
    # trained in one process: DDP ranks would keep BatchNorm statistics of their own (CPU
    # has no SyncBatchNorm), and ddp_spawn hands back rank 0's
    _trainer(devices=1).fit(model, datamodule=data)

    (one,) = _trainer(devices=1).validate(model, datamodule=data, verbose=False)
    (two,) = _trainer(devices=2).validate(model, datamodule=data, verbose=False)
    assert set(one) >= {"val/precision", "val/recall", "val/f1"}
    assert one["val/recall"] > 0, "no detections: the comparison would be empty"
    assert set(two) == set(one)
    for key, value in one.items():
        assert two[key] == pytest.approx(value, abs=1e-6), key
