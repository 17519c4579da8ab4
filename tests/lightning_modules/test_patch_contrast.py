"""Patch-contrastive FCNN: fit on images alone, pseudo masks on disk, convergence stop."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from protoseg.callbacks.prediction_writer import InstancePredictionWriter
from protoseg.datamodules.monuseg import MoNuSegDataModule
from protoseg.lightning_modules.patch_contrast import PatchContrastModule
from protoseg.modules.fcnn import TinyFCNN


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


def tiny_module(**kwargs: object) -> PatchContrastModule:
    defaults = dict(patches_per_image=16, min_area=5, min_distance=3, tile_size=64)
    return PatchContrastModule(
        net=TinyFCNN(widths=(8, 8), dilations=(1, 2)), **{**defaults, **kwargs}
    )


def test_fit_on_images_then_write_pseudo_masks_the_head_can_read(
    tiny_monuseg_root: Path, tmp_path: Path
) -> None:
    L.seed_everything(0)
    model = tiny_module(converge_patience=0)
    trainer = L.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
    )
    data = tiny_data(tiny_monuseg_root, label_source="none")
    before = [p.detach().clone() for p in model.net.parameters()]
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 6
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net.parameters(), strict=True))
    assert torch.isfinite(model.separation).all()

    out = tmp_path / "pseudo"
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=[InstancePredictionWriter(out, overlay=False, geojson=False)],
    )
    trainer.predict(model, datamodule=data, return_predictions=False)
    for stem in ("img0", "img1", "img2"):
        instances = np.array(Image.open(out / f"{stem}.png"))
        binary = np.array(Image.open(out / "binary" / f"{stem}.png"))
        assert instances.dtype == np.uint16 and instances.shape == (64, 64)
        assert set(np.unique(binary)) <= {0, 255}
        assert ((instances > 0) == (binary > 0)).all()
    assert not list(out.rglob("*.tmp"))

    head_data = tiny_data(tiny_monuseg_root, pseudo_mask_dir=str(out))
    head_data.setup("fit")
    assert len(head_data.train_dataset) == 8


@pytest.mark.parametrize("refine_pad", [None, 4], ids=["classes", "refined"])
def test_validation_scores_pseudo_masks_against_labels(
    tiny_monuseg_root: Path, refine_pad: int | None
) -> None:
    L.seed_everything(0)
    model = tiny_module(refine_pad=refine_pad)
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False)
    data = tiny_data(tiny_monuseg_root)
    trainer.fit(model, datamodule=data)
    (metrics,) = trainer.validate(model, datamodule=data)
    assert {"val/pixel_dice", "val/aji", "val/object_dice"} <= metrics.keys()


def test_views_are_aligned_before_pairing(tiny_monuseg_root: Path) -> None:
    """A pointwise network sees the same pixel in both views: positives do not separate."""
    L.seed_everything(0)
    model = PatchContrastModule(
        net=nn.Conv2d(3, 3, 1), jitter=0.0, patches_per_image=16, converge_patience=0
    )
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=tiny_data(tiny_monuseg_root, label_source="none"))
    assert model.separation[0].item() < 1e-6


@pytest.mark.parametrize(
    ("tolerance", "converged_at", "steps"),
    [
        # In range at every step and any gain counts as a plateau: stops at min_steps.
        (10.0, 4, 5),
        # In range, but no gain is small enough: the between-pairs separation may still grow.
        (-10.0, None, 8),
    ],
)
def test_convergence_criterion_stops_training_on_a_plateau(
    tiny_monuseg_root: Path, tolerance: float, converged_at: int | None, steps: int
) -> None:
    L.seed_everything(0)
    model = tiny_module(
        converge_positive=10.0,
        converge_negative=-1.0,
        converge_tolerance=tolerance,
        converge_patience=3,
        min_steps=4,
    )
    trainer = L.Trainer(
        max_steps=8,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=tiny_data(tiny_monuseg_root, label_source="none"))
    assert model.converged_at_step == converged_at
    assert trainer.global_step == steps


class _BF16Logits(nn.Module):
    """A network whose logits are the same bf16 values with or without autocast."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Conv2d(3, 4, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            return (10 * self.inner(images.float())).to(torch.bfloat16)


def test_objective_is_float32_under_bf16_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the network runs in bf16: the same logits give the same float32 loss as without
    autocast (CPU autocast would otherwise softmax and matmul them in bf16)."""
    model = PatchContrastModule(net=_BF16Logits(), patches_per_image=16).eval()
    model.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    monkeypatch.setattr(model, "log", lambda *args, **kwargs: None)
    images = torch.randn(2, 3, 32, 32)
    losses = []
    for autocast in (False, True):
        torch.manual_seed(0)
        model.separation.fill_(float("nan"))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            losses.append(model.training_step({"image": images}, 0))
    assert losses[0].dtype == losses[1].dtype == torch.float32
    assert losses[0] != 0
    assert torch.equal(losses[0], losses[1])


def test_resumed_run_stops_where_an_uninterrupted_one_does(
    tiny_monuseg_root: Path, tmp_path: Path
) -> None:
    """The convergence window travels in the checkpoint: resuming does not refill it."""
    settings = dict(
        converge_positive=10.0,
        converge_negative=-1.0,
        converge_tolerance=10.0,
        converge_patience=5,
        min_steps=0,
    )

    def fit(max_steps: int, root: Path, ckpt_path: str | None = None) -> PatchContrastModule:
        L.seed_everything(0)
        model = tiny_module(**settings)
        trainer = L.Trainer(
            max_steps=max_steps,
            accelerator="cpu",
            logger=False,
            default_root_dir=root,
            enable_progress_bar=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        data = tiny_data(tiny_monuseg_root, label_source="none")
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
        return model

    uninterrupted = fit(20, tmp_path / "whole")
    assert uninterrupted.converged_at_step == 5
    fit(3, tmp_path / "first")
    (checkpoint,) = (tmp_path / "first").rglob("*.ckpt")
    resumed = fit(20, tmp_path / "resumed", ckpt_path=str(checkpoint))
    assert resumed.converged_at_step == 5
    assert len(resumed.separation_history) == 6
