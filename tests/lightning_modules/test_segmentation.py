"""Segmentation head: trains on a tiny MoNuSeg-layout root, scores, predicts, reloads."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import cpu_trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from protoseg.callbacks.prediction_writer import InstancePredictionWriter
from protoseg.datamodules.monuseg import MoNuSegDataModule
from protoseg.io.errors import DataError
from protoseg.lightning_modules import segmentation
from protoseg.lightning_modules.segmentation import SegmentationModule
from protoseg.modules.networks import UNet
from protoseg.postprocess import DistanceSplit, SamRefinement, ThreeClassWatershed
from protoseg.scoring import score_predictions


def tiny_module(**kwargs: object) -> SegmentationModule:
    net = UNet("resnet18", decoder_channels=(16, 16, 8, 8, 8))
    return SegmentationModule(net=net, tile_size=64, tile_overlap=16, **kwargs)


def tiny_data(root: Path, **kwargs: object) -> MoNuSegDataModule:
    defaults = dict(root=str(root), crop_size=32, crops_per_epoch=8, batch_size=4, num_workers=0)
    return MoNuSegDataModule(**{**defaults, **kwargs})


def test_fast_dev_run_fit_validate_predict(tiny_monuseg_root: Path) -> None:
    L.seed_everything(0)
    model = tiny_module()
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False)
    data = tiny_data(tiny_monuseg_root)
    trainer.fit(model, datamodule=data)
    (metrics,) = trainer.validate(model, datamodule=data)
    assert {"val/aji", "val/object_dice", "val/pixel_dice", "val/pq"} <= metrics.keys()
    predictions = trainer.predict(model, datamodule=data)
    items = [item for batch in predictions for item in batch]
    assert items and all(item["instances"].dtype == np.int32 for item in items)


def test_training_without_instance_maps_names_the_problem(
    tmp_path: Path, make_monuseg_root
) -> None:
    """A labelled root with a folder of unlabelled tiles and no pseudo masks: the crops are
    images only, which a supervised head cannot train on. The fit stops before its first
    step, naming an unlabelled tile; a batch of images only is refused too."""
    root = make_monuseg_root(tmp_path / "r")
    extra = make_monuseg_root(tmp_path / "extra", labels=()) / "images"
    for path in extra.iterdir():
        path.rename(path.with_name(f"tile_{path.name}"))
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False)
    data = tiny_data(root, unlabelled_dirs=[str(extra)])
    model = tiny_module()
    with pytest.raises(
        DataError, match=r"tile_img0\.tif: no labels or pseudo mask, and SegmentationModule"
    ):
        trainer.fit(model, datamodule=data)
    assert trainer.global_step == 0
    images_only = {"image": torch.zeros(2, 3, 32, 32)}
    with pytest.raises(ValueError, match="SegmentationModule trains on instance maps"):
        model.training_step(images_only, 0)


def test_validation_of_resampled_images_scores_what_the_writer_writes(
    tiny_monuseg_root: Path, tmp_path: Path
) -> None:
    """Images at 0.5 µm/px for a model at 0.25: validation scores its maps at the files' own
    resolution, so its figures are ``protoseg score``'s of the maps the writer writes."""
    L.seed_everything(0)
    model = tiny_module()
    data = tiny_data(tiny_monuseg_root, val_fraction=0.0, image_mpp=0.5, crop_size=64)
    quiet = dict(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer = L.Trainer(max_steps=10, limit_val_batches=0, enable_checkpointing=False, **quiet)
    trainer.fit(model, datamodule=data)
    # With TensorBoard the overlays draw the 64 px labels on the 128 px image.
    logged = dict(quiet, logger=TensorBoardLogger(tmp_path, name="tb"))
    (metrics,) = L.Trainer(**logged).validate(model, datamodule=data)
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    out = tmp_path / "maps"
    writer = InstancePredictionWriter(out, geojson=False, overlay=False)
    L.Trainer(callbacks=[writer], **quiet).predict(model, datamodule=data, return_predictions=False)
    scored = score_predictions(out, tiny_monuseg_root)
    assert scored["images"] == 3 and metrics["val/aji"] > 0.01, "objects found"
    for name in ("pixel_dice", "object_dice", "aji", "pq"):
        assert metrics[f"val/{name}"] == pytest.approx(scored["mean"][name], abs=1e-6)


def test_workers_score_and_draw_as_this_process_does(
    tiny_monuseg_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation with the split in two worker processes: the same metrics and the same
    overlays drawn as in-process; prediction too, one image or two to a batch, every image
    in its batch's order."""
    drawn: list[tuple[int, np.ndarray]] = []

    def draw(module, batch, prediction, index, normalization) -> None:  # noqa: ANN001
        drawn.append((index, prediction))

    monkeypatch.setattr(segmentation, "log_overlay", draw)

    def run(workers: int) -> tuple[dict, list[tuple[int, np.ndarray]], list[np.ndarray]]:
        drawn.clear()
        L.seed_everything(0)
        split = DistanceSplit(foreground_threshold=[0.4, 0.6])
        model = tiny_module(postprocess_workers=workers, postprocess=split)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
        data = tiny_data(tiny_monuseg_root, val_fraction=0.67)  # 2 of the 3 images
        (metrics,) = trainer.validate(model, datamodule=data)
        overlays = list(drawn)
        predictions = trainer.predict(model, datamodule=data)
        items = [item for batch in predictions for item in batch]
        assert [item["stem"] for item in items] == ["img0", "img1", "img2"]
        # a batch of several images (slide tiles) is split in the workers, in order
        images = torch.rand(3, 3, 64, 64)
        batch = {"image": images, "stem": ["a", "b", "c"], "path": [None] * 3}
        several = [item["instances"] for item in model.predict_step(batch, 0)]
        for one, image in zip(several, images, strict=True):
            np.testing.assert_array_equal(one, model.predict_instances(image[None])[0])
        # whole images two to a batch (split side by side with workers), in order
        paired = tiny_data(tiny_monuseg_root, predict_batch_size=2)
        batches = trainer.predict(model, datamodule=paired)
        assert [[item["stem"] for item in batch] for batch in batches] == [
            ["img0", "img1"],
            ["img2"],
        ]
        items += [item for batch in batches for item in batch]
        model.teardown("predict")
        return metrics, overlays, [item["instances"] for item in items]

    here, there = run(0), run(2)
    assert here[0] == there[0]
    assert [index for index, _ in here[1]] == [index for index, _ in there[1]] == [0, 1]
    for (_, a), (_, b) in zip(here[1], there[1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(here[2]) == len(there[2]) == 6
    for a, b in zip(here[2], there[2], strict=True):
        np.testing.assert_array_equal(a, b)


def test_auto_workers_share_the_node_among_ddp_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 4 DDP ranks on a 16-core machine each rank's pool takes 2 workers, not 8."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    model = tiny_module(postprocess_workers="auto")
    model.setup("validate")  # no trainer attached: the machine's cores
    assert model.pool.workers == 8
    model.trainer = cpu_trainer(devices=4)
    model.setup("validate")
    assert model.pool.workers == 2


def test_images_of_mixed_sizes_predict_several_to_a_batch(
    tmp_path: Path, make_monuseg_root: object
) -> None:
    """Lightning rebuilds the size-grouping batch sampler around its own: every image of a
    folder of two sizes comes out once, at its own size, two of one size to a batch."""
    root = make_monuseg_root(tmp_path / "mixed", n_images=3)  # type: ignore[operator]
    for stem in ("small0", "small1"):
        Image.new("RGB", (48, 40), "white").save(root / "images" / f"{stem}.png")
    model = tiny_module()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    data = tiny_data(root, label_source="none", predict_batch_size=2)
    batches = trainer.predict(model, datamodule=data)
    stems = [[item["stem"] for item in batch] for batch in batches]
    assert stems == [["img0", "img1"], ["small0", "small1"], ["img2"]]
    shapes = {item["stem"]: item["instances"].shape for batch in batches for item in batch}
    assert shapes["small0"] == shapes["small1"] == (40, 48) and shapes["img2"] == (64, 64)


def test_checkpoint_rebuilds_module(tiny_monuseg_root: Path, tmp_path: Path) -> None:
    model = tiny_module(postprocess=ThreeClassWatershed(min_area=5))
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=tiny_data(tiny_monuseg_root))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    assert "net" not in model.hparams, "module objects are not pickled into hparams"
    assert "postprocess" not in model.hparams
    restored = SegmentationModule.load_from_checkpoint(
        path,
        net=UNet("resnet18", decoder_channels=(16, 16, 8, 8, 8)),
        postprocess=ThreeClassWatershed(min_area=5),
    )
    assert restored.postprocess.min_area == 5
    for key, value in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value)


def test_same_seed_same_training(tiny_monuseg_root: Path) -> None:
    def train_once() -> dict[str, torch.Tensor]:
        L.seed_everything(7, workers=True)
        model = tiny_module()
        trainer = L.Trainer(
            max_steps=3,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            enable_progress_bar=False,
        )
        trainer.fit(model, datamodule=tiny_data(tiny_monuseg_root))
        return {k: v.clone() for k, v in model.state_dict().items()}

    first, second = train_once(), train_once()
    for key in first:
        torch.testing.assert_close(first[key], second[key])


class Erases(SamRefinement):
    """A refinement that erases every object, and records what it was given."""

    def __init__(self) -> None:
        super().__init__(progress=False)
        self.loads, self.given = 0, []

    def load(self):  # noqa: ANN201 - no SAM model needed to check the wiring
        self.loads += 1

    def forward(self, image: np.ndarray, instances: np.ndarray) -> np.ndarray:
        self.given.append((image, instances))
        return np.zeros_like(instances)


def test_refine_redraws_the_split_in_validation_and_prediction(tiny_monuseg_root: Path) -> None:
    """``refine`` gets each image's own RGB pixels and the split's instances; its maps are
    the ones scored and predicted, and neither its settings nor a model reach the checkpoint."""
    L.seed_everything(0)
    model = tiny_module(postprocess=DistanceSplit(min_area=3), refine=Erases())
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    data = tiny_data(tiny_monuseg_root, val_fraction=0.0)  # every image scores
    (metrics,) = trainer.validate(model, datamodule=data)
    assert model.refine.loads == 1, "loaded before the first image"
    assert metrics["val/pixel_dice"] == 0.0
    first = sorted((tiny_monuseg_root / "images").iterdir())[0]
    image, instances = model.refine.given[0]
    np.testing.assert_array_equal(image, np.array(Image.open(first)))
    refine, model.refine = model.refine, None
    split = model.predict_instances(data.val_dataset[0]["image"][None])[0]
    pairs = np.unique(np.stack([instances.ravel(), split.ravel()]), axis=1)
    assert instances.any() and len(pairs[0]) == len(np.unique(split)), "the split's objects"
    assert trainer.validate(model, datamodule=data)[0]["val/pixel_dice"] > 0, "objects found"
    model.refine = refine
    items = [item for batch in trainer.predict(model, datamodule=data) for item in batch]
    assert len(items) == 3 and not any(item["instances"].any() for item in items)
    assert "refine" not in model.hparams
    assert not any(key.startswith("refine") for key in model.state_dict())
