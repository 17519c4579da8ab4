"""PSM stage: fit on images alone, pseudo masks on disk, validation on labels and points."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.callbacks.prediction_writer import InstancePredictionWriter
from protoseg.datamodules.monuseg import MoNuSegDataModule
from protoseg.lightning_modules.psm import PSMModule
from protoseg.modules.activation_net import ShallowActivationNet
from protoseg.modules.ssl_augment import PathologyViewAugment


def tiny_module(**kwargs: object) -> PSMModule:
    defaults = dict(
        augment=PathologyViewAugment(size=32, blur_p=0.0),
        projection_hidden_dim=16,
        projection_dim=8,
        min_area=5,
        min_distance=3,
        warmup_steps=1,
    )
    net = ShallowActivationNet("test_resnet", out_indices=(0, 1))
    return PSMModule(backbone=net, **{**defaults, **kwargs})


def tiny_data(root: Path, **kwargs: object) -> MoNuSegDataModule:
    defaults = dict(
        root=str(root),
        crop_size=32,
        crops_per_epoch=8,
        batch_size=4,
        num_workers=0,
        val_fraction=0.0,
    )
    return MoNuSegDataModule(**{**defaults, **kwargs})


def trainer(**kwargs: object) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**defaults, **kwargs})


def test_fit_on_images_then_write_pseudo_masks_the_head_can_read(
    tiny_monuseg_root: Path, tmp_path: Path
) -> None:
    L.seed_everything(0)
    model = tiny_module()
    data = tiny_data(tiny_monuseg_root, label_source="none")
    before = [p.detach().clone() for p in model.backbone.parameters()]
    trainer(max_steps=3).fit(model, datamodule=data)
    assert any(
        not torch.equal(a, b) for a, b in zip(before, model.backbone.parameters(), strict=True)
    )

    out = tmp_path / "pseudo"
    writer = InstancePredictionWriter(out, overlay=False, geojson=False)
    trainer(callbacks=[writer]).predict(model, datamodule=data, return_predictions=False)
    for stem in ("img0", "img1", "img2"):
        instances = np.array(Image.open(out / f"{stem}.png"))
        binary = np.array(Image.open(out / "binary" / f"{stem}.png"))
        assert instances.dtype == np.uint16 and instances.shape == (64, 64)
        assert ((instances > 0) == (binary > 0)).all()
        assert instances.max() >= 1  # the synthetic nuclei are found
    assert not list(out.rglob("*.tmp"))
    head_data = tiny_data(tiny_monuseg_root, pseudo_mask_dir=str(out))
    head_data.setup("fit")
    assert len(head_data.train_dataset) == 8


@pytest.mark.parametrize("refine_pad", [None, 4], ids=["clustered", "refined"])
def test_validation_scores_pseudo_masks_against_labels(
    tiny_monuseg_root: Path, refine_pad: int | None
) -> None:
    L.seed_everything(0)
    model = tiny_module(refine_pad=refine_pad)
    (metrics,) = trainer().validate(model, datamodule=tiny_data(tiny_monuseg_root))
    assert {"val/pixel_dice", "val/aji", "val/object_dice"} <= metrics.keys()
    # Purple disks on pink: colour and activation clustering find most nuclei pixels.
    assert metrics["val/pixel_dice"] > 0.7


def test_activation_map_runs_under_inference_mode_and_keeps_training_mode() -> None:
    model = tiny_module().train()
    images = torch.randn(2, 3, 48, 40)
    with torch.inference_mode():
        maps = model(images)
    assert maps.shape == (2, 1, 48, 40)
    assert model.training
    assert not any(p.grad is not None for p in model.parameters())


def test_the_authors_rotation_objective_trains_and_its_colour_prior_finds_nuclei(
    tiny_monuseg_root: Path,
) -> None:
    L.seed_everything(0)
    model = tiny_module(objective="rotation", clustering="colour_prior", num_clusters=3)
    assert not hasattr(model, "projector") and model.output.out_features == 1
    data = tiny_data(tiny_monuseg_root)
    turned = torch.rand(2, 3, 32, 32)
    maps = model.backbone(turned)
    before = model.rotation_output(maps).detach()
    trainer(max_steps=4).fit(model, datamodule=data)
    assert not torch.equal(before, model.rotation_output(model.backbone(turned)).detach())
    (metrics,) = trainer().validate(model, datamodule=data)
    # The synthetic nuclei are dark purple on pale pink: the colour prior keeps them.
    assert metrics["val/pixel_dice"] > 0.5
    # The activation is Grad-CAM of the one output: maps in [0, 1], one per image.
    activation = model(torch.rand(2, 3, 32, 32))
    assert activation.shape == (2, 1, 32, 32)
    assert float(activation.min()) >= 0.0 and float(activation.max()) <= 1.0
    with pytest.raises(ValueError, match="objective"):
        tiny_module(objective="contrastive")
    with pytest.raises(ValueError, match="clustering"):
        tiny_module(clustering="otsu")
