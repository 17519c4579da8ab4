"""Two CPU processes (gloo DDP) train and score the segmentation head like one process does.

The design makes equality expected, not approximate by luck:

- training: 2 ranks x batch 2 against 1 process x batch 4 on the same epoch seeds (the
  sampler hands rank r every other seed, so step k's two rank batches are the single
  process's batch k); a net without BatchNorm and a plain mean cross-entropy, so that the
  DDP-averaged gradient is the single-process gradient up to float rounding;
- validation: 3 images on 2 ranks (2 + 1, no padding duplicate), per-image scores gathered,
  against the same weights scored by one process.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import cpu_trainer
from torch import nn

from protoseg.datamodules.monuseg import MoNuSegDataModule
from protoseg.lightning_modules.segmentation import SegmentationModule
from protoseg.metrics.nuclei import METRIC_NAMES
from protoseg.postprocess import ThreeClassWatershed

STEPS = 4


def segmenter() -> SegmentationModule:
    torch.manual_seed(0)
    # No BatchNorm: each rank's batch statistics would differ from one process's.
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    return SegmentationModule(
        net,
        loss=nn.CrossEntropyLoss(),
        warmup_steps=1,
        postprocess=ThreeClassWatershed(min_area=4),
        tile_size=64,
        tile_overlap=0,
        num_log_images=0,
    )


def datamodule(root: Path, batch_size: int) -> MoNuSegDataModule:
    return MoNuSegDataModule(
        str(root),
        label_source="png",
        val_fraction=0.5,
        crop_size=32,
        crops_per_epoch=8,
        batch_size=batch_size,
        num_workers=0,
    )


def trainer(devices: int) -> L.Trainer:
    return cpu_trainer(devices, max_steps=STEPS, check_val_every_n_epoch=1)


# ~90 s of CPU (two spawned processes import torch and Lightning), run by default: issue #6
# asks for this DDP check in CI.
def test_two_process_fit_and_validation_equal_one_process(
    tmp_path: Path, make_monuseg_root: object
) -> None:
    root = make_monuseg_root(tmp_path / "monuseg", n_images=6)  # type: ignore[operator]
    L.seed_everything(0)
    ddp_model = segmenter()
    ddp_trainer = trainer(devices=2)
    ddp_trainer.fit(ddp_model, datamodule=datamodule(root, batch_size=2))
    ddp_metrics = {k: v.item() for k, v in ddp_trainer.callback_metrics.items() if "val/" in k}
    assert set(ddp_metrics) == {f"val/{name}" for name in METRIC_NAMES}

    # The same weights (ddp_spawn hands rank 0's back), scored by one process.
    one = trainer(devices=1)
    scored = one.validate(ddp_model, datamodule=datamodule(root, batch_size=2), verbose=False)[0]
    for key, value in ddp_metrics.items():
        assert scored[key] == pytest.approx(value, abs=1e-6), key

    # One process with the global batch takes the same steps on the same crops.
    L.seed_everything(0)
    single = segmenter()
    trainer(devices=1).fit(single, datamodule=datamodule(root, batch_size=4))
    for (name, a), b in zip(
        single.state_dict().items(), ddp_model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    initial = segmenter().net.state_dict()
    moved = [not torch.equal(v, initial[k]) for k, v in single.net.state_dict().items()]
    assert any(moved), "training moved the weights"
