"""The probe callback logs probe/dice during SSL fit, without touching the SSL model or data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from protoseg.callbacks.linear_probe import LinearProbeCallback, load_probe_pairs
from protoseg.datamodules.tiles import TileFolderDataModule
from protoseg.lightning_modules.simclr import SimCLRModule
from protoseg.modules.backbones import TimmBackbone
from protoseg.modules.ssl_augment import PathologyViewAugment


@pytest.fixture
def probe_root(tmp_path: Path, make_monuseg_root: Any) -> Path:
    """Five labelled 64 px images: val_fraction 0.4 holds 2 out, 3 train."""
    return make_monuseg_root(tmp_path / "probe", n_images=5, size=64)


@pytest.fixture
def tile_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "tiles"
    root.mkdir()
    for index in range(2):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(
            root / f"tile{index}.png"
        )
    return root


class BatchRecorder(Callback):
    """Keeps the key set and the images of every training batch the SSL module receives."""

    def __init__(self) -> None:
        self.keys: list[set[str]] = []
        self.images: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        self.keys.append(set(batch))
        self.images.append(batch["image"].clone())


def is_crop_of(crop: torch.Tensor, images: list[np.ndarray]) -> bool:
    """Whether ``crop`` (3, s, s) in [0, 1] is exactly a window of one of the uint8 images."""
    pixels = np.rint(crop.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    size = pixels.shape[0]
    for image in images:
        for top in range(image.shape[0] - size + 1):
            for left in range(image.shape[1] - size + 1):
                if np.array_equal(image[top : top + size, left : left + size], pixels):
                    return True
    return False


def tiny_simclr() -> SimCLRModule:
    view = PathologyViewAugment(size=32)
    return SimCLRModule(
        TimmBackbone("test_resnet"), view, projection_hidden_dim=16, projection_dim=8
    )


def probe_callback(root: Path, **kwargs: Any) -> LinearProbeCallback:
    return LinearProbeCallback(
        str(root), num_train_images=2, num_val_images=1, val_fraction=0.4, steps=10, **kwargs
    )


def fit(model: L.LightningModule, data: Path, callbacks: list[Callback], tmp_path: Path) -> None:
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=CSVLogger(tmp_path / "logs", name="", version=""),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    datamodule = TileFolderDataModule(
        str(data), crop_size=32, crops_per_epoch=8, batch_size=4, num_workers=0
    )
    trainer.fit(model, datamodule=datamodule)


def test_load_probe_pairs_follows_the_datamodule_split(probe_root: Path) -> None:
    train, val, paths = load_probe_pairs(probe_root, 2, 2, val_fraction=0.4, crop_size=40)
    assert len(train) == 2 and len(val) == 2 and len(set(paths)) == 4
    image, mask = train[0]
    assert image.shape == (3, 40, 40) and image.dtype == torch.float32
    assert mask.shape == (40, 40) and mask.dtype == torch.bool and mask.any()
    with pytest.raises(Exception, match="wants 3 val images"):
        load_probe_pairs(probe_root, 2, 3, val_fraction=0.4)


def test_callback_logs_probe_dice_and_keeps_labels_out(
    probe_root: Path, tile_root: Path, tmp_path: Path
) -> None:
    L.seed_everything(0)
    recorder, probe = BatchRecorder(), probe_callback(probe_root)
    fit(tiny_simclr(), tile_root, [recorder, probe], tmp_path)
    lines = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert "probe/dice" in header and "probe/train_dice" in header
    values = [row.split(",")[header.index("probe/dice")] for row in lines[1:]]
    dice = [float(v) for v in values if v]
    assert len(dice) == 1 and 0.0 <= dice[0] <= 1.0
    assert len(probe.history) == 1 and probe.history[0]["step"] == 2
    # The SSL module saw only unlabelled tile crops: no mask, no probe image.
    assert recorder.keys and all(keys == {"image", "views"} for keys in recorder.keys)
    tiles = [np.asarray(Image.open(path)) for path in sorted(tile_root.glob("*.png"))]
    for batch in recorder.images:
        assert batch.shape == (4, 3, 32, 32)
        for crop in batch:
            assert is_crop_of(crop, tiles)
    assert all(p.parent.parent == probe_root for p in probe.probe_paths)


def test_probe_never_changes_the_ssl_model(probe_root: Path) -> None:
    model = tiny_simclr().train()
    probe = probe_callback(probe_root)
    probe.load()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = probe.run_probe(model)
    assert 0.0 <= scores["dice"] <= 1.0
    assert model.training and model.backbone.model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_shared_images_are_refused(probe_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="probe image also in the SSL training data"):
        fit(tiny_simclr(), probe_root / "images", [probe_callback(probe_root)], tmp_path)
