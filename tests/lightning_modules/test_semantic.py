"""Semantic tissue head: trains on a pseudo-mask folder, scores whole images, writes class maps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.cli import main
from protoseg.datamodules.wsss import WSSSDataModule
from protoseg.lightning_modules.semantic import SemanticSegmentationModule
from protoseg.metrics.tissue import TissueMetrics
from protoseg.modules.networks import UNet

NAMES = ["tumor", "stroma", "normal"]


def tiny_head(**kwargs: object) -> SemanticSegmentationModule:
    net = UNet("resnet18", num_classes=4, decoder_channels=(16, 16, 8, 8, 8))
    return SemanticSegmentationModule(net, NAMES, tile_size=64, tile_overlap=16, **kwargs)


def pixel_head(**kwargs: object) -> SemanticSegmentationModule:
    """A two-layer convolutional head: learns colour-coded classes in a few dozen steps."""
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)
    )
    return SemanticSegmentationModule(net, NAMES, tile_size=64, tile_overlap=16, **kwargs)


def quiet_trainer(**kwargs: object) -> L.Trainer:
    settings = dict(accelerator="cpu", logger=False, enable_checkpointing=False)
    settings.update(enable_progress_bar=False, num_sanity_val_steps=0, enable_model_summary=False)
    return L.Trainer(**{**settings, **kwargs})


def true_masks_as_pseudo(root: Path, folder: Path) -> Path:
    """Pseudo masks of the training images: their bands' codes read back from the colours
    (what a perfect weakly supervised stage would write), a quarter left unsure (255)."""
    folder.mkdir()
    colours = np.array([(110, 60, 150), (225, 140, 185), (245, 205, 220), (250, 250, 250)])
    for path in (root / "training").glob("*.png"):
        image = np.asarray(Image.open(path)).astype(float)
        codes = np.abs(image[:, :, None] - colours).sum(-1).argmin(-1).astype(np.uint8)
        codes[-12:] = 255
        Image.fromarray(codes).save(folder / path.name)
    return folder


def test_fit_on_pseudo_masks_scores_and_predicts(
    tmp_path: Path, make_wsss_root: Callable[..., Path]
) -> None:
    """60 steps on 4 colour-coded images: a small head learns the colours (mIoU > 0.9 on the
    validation images) although a quarter of each pseudo mask is unsure."""
    root = make_wsss_root(tmp_path / "luad", n_train=4, n_val=3)
    pseudo = true_masks_as_pseudo(root, tmp_path / "pseudo")
    L.seed_everything(0)
    data = WSSSDataModule(
        str(root), pseudo_mask_dir=str(pseudo), crop_size=32, batch_size=4, num_workers=0
    )
    model = pixel_head(warmup_steps=5, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-2))
    quiet_trainer(max_steps=60, limit_val_batches=0).fit(model, datamodule=data)
    trainer = quiet_trainer()
    (metrics,) = trainer.validate(model, datamodule=data, verbose=False)
    assert {"val/miou", "val/fwiou", "val/pixel_accuracy", "val/iou_tumor"} <= metrics.keys()
    assert metrics["val/miou"] > 0.9
    items = [i for batch in trainer.predict(model, datamodule=data) for i in batch]
    assert len(items) == 4 and all(i["classes"].dtype == np.uint8 for i in items)


def test_validation_pools_the_set(tmp_path: Path, make_wsss_root: Callable[..., Path]) -> None:
    """The logged figures are those of one confusion matrix over every validation image."""
    root = make_wsss_root(tmp_path / "luad", n_val=3)
    data = WSSSDataModule(str(root), num_workers=0)
    model = pixel_head()
    (metrics,) = quiet_trainer().validate(model, datamodule=data, verbose=False)
    data.setup("validate")
    expected = TissueMetrics(NAMES, prefix="val/")
    model.eval()
    with torch.no_grad():
        for item in data.val_dataset:
            expected.update(model.predict_classes(item["image"][None]), item["mask"][None])
    for key, value in expected.compute().items():
        assert metrics[key] == pytest.approx(value, nan_ok=True)


def test_training_needs_class_maps(tmp_path: Path, make_wsss_root: Callable[..., Path]) -> None:
    root = make_wsss_root(tmp_path / "luad")
    data = WSSSDataModule(str(root), crop_size=32, num_workers=0)
    with pytest.raises(ValueError, match="pseudo_mask_dir"):
        quiet_trainer(fast_dev_run=True).fit(pixel_head(), datamodule=data)


def test_cli_fit_then_predict_class_maps(
    tmp_path: Path, make_wsss_root: Callable[..., Path]
) -> None:
    """``protoseg predict --data.root DIR --output_dir OUT`` with DIR/img: one uint8 palette
    PNG of the dataset's codes per input, at its size, and an overlay."""
    root = make_wsss_root(tmp_path / "luad", n_train=2, n_val=2, n_test=2, size=40)
    pseudo = true_masks_as_pseudo(root, tmp_path / "pseudo")
    run = tmp_path / "run"
    common = [
        "--model=protoseg.lightning_modules.semantic.SemanticSegmentationModule",
        "--model.net=protoseg.modules.networks.UNet",
        "--model.net.num_classes=4",
        "--model.net.decoder_channels=[16,16,8,8,8]",
        "--model.class_names=[tumor,stroma,normal]",
        "--model.tile_size=64",
        "--model.tile_overlap=16",
        "--data=protoseg.datamodules.wsss.WSSSDataModule",
        "--data.num_workers=0",
        "--data.crop_size=32",
        f"--trainer.default_root_dir={run}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
    ]
    main(
        [
            "fit",
            *common,
            f"--data.root={root}",
            f"--data.pseudo_mask_dir={pseudo}",
            "--trainer.max_steps=2",
        ]
    )
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    out = tmp_path / "out"
    # An input that is not square, so that a transposed map would show.
    Image.fromarray(np.full((40, 56, 3), 200, np.uint8)).save(root / "test" / "img" / "wide.png")
    main(
        [
            "predict",
            *common,
            f"--ckpt_path={ckpt}",
            f"--data.root={root / 'test'}",
            f"--output_dir={out}",
        ]
    )
    for stem in ("00", "01", "wide"):
        written = Image.open(out / f"{stem}.png")
        source = Image.open(root / "test" / "img" / f"{stem}.png")
        assert written.mode == "P" and written.size == source.size
        assert set(np.unique(np.array(written)).tolist()) <= {0, 1, 2, 3}
        assert Image.open(out / f"{stem}_overlay.png").size == source.size
