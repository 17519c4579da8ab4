"""The standalone linear probe: frozen encoder, trained head, val/dice, CLI config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

from protoseg.cli import build_cli
from protoseg.datamodules.monuseg import MoNuSegDataModule
from protoseg.io.errors import DataError
from protoseg.lightning_modules.linear_probe import LinearProbeModule, mask_to_instances
from protoseg.modules.backbones import TimmBackbone, save_encoder_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_mask_to_instances_counts_components() -> None:
    mask = np.zeros((12, 12), bool)
    mask[1:4, 1:4] = True  # 9 px
    mask[6:10, 6:10] = True  # 16 px
    mask[0, 11] = True  # 1 px: dropped
    instances = mask_to_instances(mask, min_area=4)
    assert instances.dtype == np.int32 and instances.max() == 2
    assert sorted(np.bincount(instances.ravel())[1:]) == [9, 16]


def test_encoder_weights_are_loaded(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = TimmBackbone("test_resnet")
    path = save_encoder_checkpoint(source, tmp_path / "encoder.ckpt")
    probe = LinearProbeModule(encoder="test_resnet", encoder_weights=str(path))
    for key, value in source.model.state_dict().items():
        assert torch.equal(probe.features.model.state_dict()[key], value), key


def test_fit_trains_only_the_head_and_logs_val_dice(tiny_monuseg_root: Path) -> None:
    L.seed_everything(0)
    model = LinearProbeModule(encoder="test_resnet", indices=(1, 2), stride=4, min_area=4)
    frozen = {k: v.clone() for k, v in model.features.state_dict().items()}
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    data = MoNuSegDataModule(
        str(tiny_monuseg_root),
        val_fraction=0.34,
        crop_size=32,
        crops_per_epoch=4,
        batch_size=2,
        num_workers=0,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=data)
    # Weights and BatchNorm statistics of the encoder are those it started with.
    for key, value in model.features.state_dict().items():
        assert torch.equal(value, frozen[key]), key
    assert not torch.equal(model.head.conv.weight, head["conv.weight"])
    assert 0.0 <= float(trainer.callback_metrics["val/dice"]) <= 1.0
    assert "val/aji" in trainer.callback_metrics
    predictions = trainer.predict(model, datamodule=data)
    item = predictions[0][0]
    assert item["instances"].dtype == np.int32 and item["instances"].shape == (64, 64)

    # Images at 0.5 µm/px for 0.25: the 128 px masks are scored against the 64 px labels,
    # resized to them by nearest neighbour (every second pixel, from the second: an
    # independent resize).
    resampled = MoNuSegDataModule(
        str(tiny_monuseg_root), val_fraction=0.34, image_mpp=0.5, num_workers=0
    )
    (metrics,) = trainer.validate(model, datamodule=resampled)
    intersection = total = 0
    model.eval()
    for batch in resampled.val_dataloader():
        with torch.no_grad():
            _, masks = model.predict_instances(batch["image"])
        small = masks[0].numpy()[1::2, 1::2]
        truth = batch["instances"][0].numpy() > 0
        assert masks.shape[-2:] == (128, 128) and truth.shape == (64, 64)
        intersection += int((small & truth).sum())
        total += int(small.sum() + truth.sum())
    assert total > 0 and metrics["val/dice"] == pytest.approx(2 * intersection / total)


def test_config_builds_through_the_cli(tiny_monuseg_root: Path, tmp_path: Path) -> None:
    weights = save_encoder_checkpoint(TimmBackbone("test_resnet"), tmp_path / "enc.ckpt")
    args: list[Any] = [
        f"--config={ROOT / 'configs' / 'probe' / 'monuseg.yaml'}",
        "--model.init_args.encoder=test_resnet",
        f"--model.init_args.encoder_weights={weights}",
        f"--data.root={tiny_monuseg_root}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    cli = build_cli(args, run=False)
    assert isinstance(cli.model, LinearProbeModule)
    assert cli.model.hparams.encoder_weights == str(weights)
    assert cli.model.hparams.stride == 8 and tuple(cli.model.hparams.indices) == (1, 2, 3)
    assert isinstance(cli.datamodule, MoNuSegDataModule)
    assert cli.trainer.max_steps == 300
    head = torch.nn.Conv2d(2, 1, 1)
    assert cli.model.optimizer_factory(head.parameters()).defaults["lr"] == 0.01


def test_missing_encoder_weights_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.ckpt: backbone weights file does not exist"):
        LinearProbeModule(encoder="test_resnet", encoder_weights=str(tmp_path / "missing.ckpt"))
