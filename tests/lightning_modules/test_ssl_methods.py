"""SimCLR, MoCo, BYOL and DINO train on tiny tiles, export their encoder and run under DDP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.callbacks.encoder_export import EncoderExport
from protoseg.cli import build_cli
from protoseg.datamodules.tiles import TileFolderDataModule
from protoseg.distributed import DestroyProcessGroupAtExit
from protoseg.lightning_modules.byol import BYOLModule
from protoseg.lightning_modules.dino import DINOModule
from protoseg.lightning_modules.moco import MoCoModule
from protoseg.lightning_modules.simclr import SimCLRModule
from protoseg.lightning_modules.ssl_base import SSLModule
from protoseg.modules.backbones import TimmBackbone
from protoseg.modules.ssl_augment import MultiCropAugment, PathologyViewAugment

ROOT = Path(__file__).resolve().parents[2]
TINY = "test_resnet"


@pytest.fixture
def tile_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "tiles"
    root.mkdir()
    for index in range(3):
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"tile{index}.png")
    return root


def tiny_data(root: Path) -> TileFolderDataModule:
    return TileFolderDataModule(
        str(root), crop_size=32, crops_per_epoch=8, batch_size=4, num_workers=0
    )


def simclr(backbone: str = TINY) -> SSLModule:
    view = PathologyViewAugment(size=32)
    return SimCLRModule(TimmBackbone(backbone), view, projection_hidden_dim=32, projection_dim=16)


def moco() -> SSLModule:
    view = PathologyViewAugment(size=32)
    return MoCoModule(
        TimmBackbone(TINY), view, projection_hidden_dim=32, projection_dim=16, queue_size=6
    )


def byol() -> SSLModule:
    view = PathologyViewAugment(size=32)
    return BYOLModule(
        TimmBackbone(TINY),
        view,
        projection_hidden_dim=32,
        projection_dim=16,
        prediction_hidden_dim=32,
    )


def dino() -> SSLModule:
    crops = MultiCropAugment(global_size=32, local_size=16, num_local=2)
    return DINOModule(TimmBackbone(TINY), crops, out_dim=64, hidden_dim=32, bottleneck_dim=16)


@pytest.mark.parametrize("make", [simclr, moco, byol, dino], ids=lambda f: f.__name__)
def test_fast_dev_run_and_encoder_export(
    make: Callable[[], SSLModule], tile_root: Path, tmp_path: Path
) -> None:
    L.seed_everything(0)
    model = make()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    path = tmp_path / "encoder.ckpt"
    trainer = L.Trainer(
        fast_dev_run=True, accelerator="cpu", logger=False, callbacks=[EncoderExport(path)]
    )
    trainer.fit(model, datamodule=tiny_data(tile_root))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "train/embedding_std" in trainer.callback_metrics
    changed = [k for k, v in model.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "one step moved the backbone"
    exported = TimmBackbone(TINY, weights=str(path))
    for key, value in model.export_backbone.model.state_dict().items():
        torch.testing.assert_close(exported.model.state_dict()[key], value)


def test_method_scalars_are_logged(tile_root: Path) -> None:
    L.seed_everything(0)
    model = dino()
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False)
    trainer.fit(model, datamodule=tiny_data(tile_root))
    metrics = trainer.callback_metrics
    assert metrics["train/teacher_temp"].item() == pytest.approx(0.04)
    assert metrics["train/momentum"].item() == pytest.approx(0.996)
    assert model.export_backbone is model.teacher_backbone
    assert model.center.center.abs().sum() > 0, "the center moved"


def test_lr_is_scaled_by_the_global_batch(tile_root: Path) -> None:
    model = SimCLRModule(
        TimmBackbone(TINY),
        PathologyViewAugment(size=32),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        projection_hidden_dim=32,
        projection_dim=16,
        base_lr_batch_size=16,
    )
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        accumulate_grad_batches=2,
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=tiny_data(tile_root))
    # 0.1 per 16 images; global batch 4 images * 1 process * 2 accumulated batches = 8.
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(0.05)


def test_checkpoint_rebuilds_module(tile_root: Path, tmp_path: Path) -> None:
    model = moco()
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=tiny_data(tile_root))
    assert int(model.queue.pointer) == (2 * 4) % 6
    path = tmp_path / "moco.ckpt"
    trainer.save_checkpoint(path)
    assert "backbone" not in model.hparams and model.hparams.queue_size == 6
    restored = MoCoModule.load_from_checkpoint(
        path, backbone=TimmBackbone(TINY), augment=PathologyViewAugment(size=32)
    )
    for key, value in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value)


@pytest.mark.parametrize(
    "config", sorted((ROOT / "configs" / "ssl").glob("*.yaml")), ids=lambda p: p.stem
)
def test_shipped_config_builds_and_steps(
    config: Path, tile_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the config's runs/... outputs (logs too) land here
    size_key = "global_size" if "dino" in config.stem else "size"
    cli = build_cli(
        [
            f"--config={config}",
            f"--data.init_args.root={tile_root}",
            "--data.init_args.crop_size=32",
            "--data.init_args.crops_per_epoch=4",
            "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0",
            f"--model.init_args.augment.init_args.{size_key}=32",
            "--model.init_args.backbone.init_args.name=test_resnet",
            "--trainer.max_steps=1",
            "--trainer.enable_progress_bar=false",
        ],
        run=False,
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    name = config.stem.removesuffix("_monuseg")
    encoder = tmp_path / "runs" / f"ssl_{name}" / "encoder.ckpt"
    assert TimmBackbone(TINY, weights=str(encoder)).num_features > 0
    # The Lightning checkpoint's backbone.model.* weights load too (the key encoder's do not).
    last = tmp_path / "runs" / f"ssl_{name}" / "checkpoints" / "last.ckpt"
    loaded = TimmBackbone(TINY, weights=str(last)).model.state_dict()
    for key, value in cli.model.backbone.model.state_dict().items():
        torch.testing.assert_close(loaded[key], value)


def test_simclr_ddp_on_two_cpu_processes(tile_root: Path, tmp_path: Path) -> None:
    L.seed_everything(0)
    path = tmp_path / "encoder.ckpt"
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[EncoderExport(path), DestroyProcessGroupAtExit()],
    )
    data = TileFolderDataModule(
        str(tile_root), crop_size=32, crops_per_epoch=16, batch_size=4, num_workers=0
    )
    model = simclr()
    before = {k: v.clone() for k, v in model.backbone.model.state_dict().items()}
    trainer.fit(model, datamodule=data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    # ddp_spawn returns rank 0's weights to this process; rank 0 exported the same ones.
    exported = TimmBackbone(TINY, weights=str(path)).model.state_dict()
    trained = model.backbone.model.state_dict()
    assert any(not torch.equal(trained[k], before[k]) for k in before)
    for key, value in trained.items():
        torch.testing.assert_close(exported[key], value)
