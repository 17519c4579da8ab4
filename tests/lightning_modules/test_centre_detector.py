"""Centre detector: trains on a tiny MoNuSeg-layout root, scores its peaks, predicts, and
hands its frozen weights to a segmentation head's distance split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.datamodules.monuseg import MoNuSegDataModule
from protoseg.io.errors import DataError
from protoseg.lightning_modules.centre_detector import CentreDetectorModule, points_to_discs
from protoseg.lightning_modules.segmentation import SegmentationModule
from protoseg.modules.centre_targets import CentreTargets
from protoseg.modules.networks import UNet
from protoseg.modules.psm import cell_points
from protoseg.postprocess import CentreGuidedSplit

CHANNELS = (16, 16, 8, 8, 8)


def tiny_net(classes: int) -> UNet:
    return UNet("resnet18", num_classes=classes, decoder_channels=CHANNELS)


def tiny_data(root: Path) -> MoNuSegDataModule:
    return MoNuSegDataModule(
        root=str(root), crop_size=32, crops_per_epoch=8, batch_size=4, num_workers=0
    )


def short_trainer(root_dir: Path, steps: int = 1) -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        default_root_dir=root_dir,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


def reading_head(weights: Path, centre_votes: bool = False, **kwargs: object) -> SegmentationModule:
    """A tiny head whose distance split reads the detector saved at ``weights``."""
    split = CentreGuidedSplit(str(weights), centre_votes=centre_votes, **kwargs)
    return SegmentationModule(net=tiny_net(3), postprocess=split, tile_size=64, tile_overlap=16)


def save_detector(path: Path, net: UNet, **hparams: object) -> Path:
    """A detector checkpoint as the CLI writes it: the network's config and weights."""
    spec = {"class_path": "protoseg.modules.networks.UNet", "init_args": net_args(net)}
    state = {f"net.{key}": value for key, value in net.state_dict().items()}
    torch.save({"hyper_parameters": {"net": spec, **hparams}, "state_dict": state}, path)
    return path


def net_args(net: UNet) -> dict[str, object]:
    classes = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1].out_channels
    return {"encoder": "resnet18", "num_classes": classes, "decoder_channels": list(CHANNELS)}


def test_detector_fit_validate_predict(tiny_monuseg_root: Path) -> None:
    L.seed_everything(0)
    model = CentreDetectorModule(tiny_net(1), tile_size=64, tile_overlap=16)
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False)
    data = tiny_data(tiny_monuseg_root)
    trainer.fit(model, datamodule=data)
    (metrics,) = trainer.validate(model, datamodule=data)
    assert {"val/precision", "val/recall", "val/f1"} <= metrics.keys()
    items = [item for batch in trainer.predict(model, datamodule=data) for item in batch]
    assert items and all(item["instances"].dtype == np.int32 for item in items)


def test_bias_starts_at_the_prior() -> None:
    model = CentreDetectorModule(tiny_net(1)).eval()
    heat = model.heatmaps(torch.zeros(1, 3, 32, 32))
    assert heat.shape == (1, 32, 32)
    # The last convolution's bias alone sets a constant input's output near 0.1 (weights are
    # small at init); far from the 0.5 of a zero bias.
    assert 0.0 < float(np.median(heat)) < 0.3


def test_points_to_discs() -> None:
    discs = points_to_discs(np.array([[5.0, 5.0], [20.2, 11.7]]), (30, 30), radius=2)
    assert discs.max() == 2 and discs[5, 7] == 1 and discs[20, 12] == 2 and discs[0, 0] == 0


def test_head_reads_the_frozen_detector(tiny_monuseg_root: Path, tmp_path: Path) -> None:
    L.seed_everything(0)
    detector = CentreDetectorModule(tiny_net(1), tile_size=64, tile_overlap=16)
    trainer = short_trainer(tmp_path / "det")
    trainer.fit(detector, datamodule=tiny_data(tiny_monuseg_root))
    weights = tmp_path / "det.ckpt"
    trainer.save_checkpoint(weights)

    head = reading_head(weights, centre_net=tiny_net(1))
    short_trainer(tmp_path / "head", steps=2).fit(head, datamodule=tiny_data(tiny_monuseg_root))
    centre_net = head.postprocess.centre_net
    for key, value in detector.net.state_dict().items():
        torch.testing.assert_close(centre_net.state_dict()[key], value)
    assert all(not p.requires_grad for p in centre_net.parameters())
    # in train mode too (a fit's), the detector runs on its running BatchNorm statistics and
    # leaves them as they are
    head.train()
    buffers = {k: v.clone() for k, v in centre_net.state_dict().items()}
    images = torch.rand(1, 3, 64, 64)
    maps = head.postprocess.guide(images, 64, 16)
    assert maps.shape == (1, 1, 64, 64)
    np.testing.assert_allclose(maps[:, 0], detector.eval().heatmaps(images), atol=1e-6)
    assert centre_net.training, "the module's mode is kept"
    for key, value in centre_net.state_dict().items():
        torch.testing.assert_close(value, buffers[key], msg=key)
    head.eval()
    assert head.predict_instances(images)[0].shape == (64, 64)
    # A plain state dict of the network loads too.
    plain = tmp_path / "plain.pt"
    torch.save(detector.net.state_dict(), plain)
    other = CentreGuidedSplit(str(plain), centre_net=tiny_net(1))
    other.prepare_fit({})
    torch.testing.assert_close(other.centre_net.state_dict(), detector.net.state_dict())
    with pytest.raises(DataError, match="plain.pt: weights do not fit centre_net"):
        CentreGuidedSplit(str(plain), centre_net=tiny_net(3)).prepare_fit({})


def test_the_network_comes_from_the_detector_s_checkpoint(tmp_path: Path) -> None:
    """Without centre_net the strategy builds the detector's own network from its
    checkpoint's config, and the head keeps that config, so that its checkpoint rebuilds
    the detector without the detector's file."""
    trained = tiny_net(3)
    weights = save_detector(tmp_path / "det.ckpt", trained, offset_weight=1.0)
    split = CentreGuidedSplit(str(weights), centre_votes=True)
    split.prepare_fit({})
    torch.testing.assert_close(split.centre_net.state_dict(), trained.state_dict())
    given = {"class_path": "protoseg.postprocess.centre_guided.CentreGuidedSplit", "init_args": {}}
    completed = split.complete_config(given)
    assert completed["init_args"]["centre_net"]["init_args"] == net_args(trained)
    assert given["init_args"] == {}, "the config given is left as it is"
    plain = tmp_path / "plain.pt"
    torch.save(trained.state_dict(), plain)
    with pytest.raises(DataError, match="plain.pt: holds no network config"):
        CentreGuidedSplit(str(plain))


def test_detectors_that_do_not_fit_the_head_are_refused(tmp_path: Path) -> None:
    """centre_votes with a detector trained without offsets, one whose file does not say or
    whose network gives no offsets, and a detector whose images were normalised or sized
    otherwise than the head's, are refused in one line naming the file: before a fit, and
    before a validation or prediction where the detector's file is there."""
    no_offsets = save_detector(tmp_path / "heat.ckpt", tiny_net(3), offset_weight=0.0)
    trained_without = r"heat.ckpt: the detector was trained without centre offsets"
    with pytest.raises(DataError, match=trained_without) as refused:
        CentreGuidedSplit(str(no_offsets), centre_votes=True).prepare_fit({})
    assert "\n" not in str(refused.value)
    split = CentreGuidedSplit(str(no_offsets), centre_votes=False)
    split.prepare_fit({})
    split.check({})
    # A head's checkpoint rebuilt with its votes turned on since its fit.
    rebuilt = CentreGuidedSplit(str(no_offsets), centre_net=tiny_net(3), centre_votes=True)
    with pytest.raises(DataError, match=trained_without):
        rebuilt.check({})
    no_offsets.unlink()  # without the file the head's fit-time check stands
    rebuilt.check({})
    # A file that does not say how its offsets were trained: a plain state dict.
    plain = tmp_path / "plain.pt"
    torch.save(tiny_net(3).state_dict(), plain)
    with pytest.raises(DataError, match=r"plain.pt: does not say whether the detector was"):
        CentreGuidedSplit(str(plain), centre_net=tiny_net(3), centre_votes=True).prepare_fit({})
    CentreGuidedSplit(str(plain), centre_net=tiny_net(3)).prepare_fit({})
    # A network without offsets, its checkpoint claiming them.
    one_output = save_detector(tmp_path / "one.ckpt", tiny_net(1), offset_weight=1.0)
    with pytest.raises(DataError, match=r"one.ckpt: the detector's network gives 1 output"):
        CentreGuidedSplit(str(one_output), centre_votes=True).prepare_fit({})
    with pytest.raises(DataError, match=r"one.ckpt: the detector's network gives 1 output"):
        CentreGuidedSplit(str(one_output), centre_votes=True).check({})
    CentreGuidedSplit(str(one_output)).prepare_fit({})
    other = save_detector(tmp_path / "other.ckpt", tiny_net(3))
    saved = torch.load(other, weights_only=False)
    saved["datamodule_hyper_parameters"] = {"mean": (0.5, 0.5, 0.5), "std": [0.2] * 3, "mpp": 0.25}
    torch.save(saved, other)
    split = CentreGuidedSplit(str(other))
    split.prepare_fit({"mean": [0.5, 0.5, 0.5], "std": (0.2, 0.2, 0.2), "mpp": 0.25})
    with pytest.raises(DataError, match=r"other.ckpt: the detector's datamodule had mean"):
        split.prepare_fit({"mean": (0.485, 0.456, 0.406), "std": (0.2,) * 3, "mpp": 0.25})
    with pytest.raises(DataError, match=r"had mpp 0.25, the head's has 0.5"):
        split.prepare_fit({"mpp": 0.5})


def test_head_without_detector_weights_names_the_problem(
    tiny_monuseg_root: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.ckpt"
    head = reading_head(missing, centre_net=tiny_net(1))
    with pytest.raises(DataError, match="nowhere.ckpt: centre detector checkpoint"):
        short_trainer(tmp_path).fit(head, datamodule=tiny_data(tiny_monuseg_root))
    with pytest.raises(DataError, match="nowhere.ckpt: centre detector checkpoint"):
        CentreGuidedSplit(str(missing))
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="corrupt.ckpt: .* is not a PyTorch checkpoint"):
        CentreGuidedSplit(str(corrupt), centre_net=tiny_net(1)).prepare_fit({})
    foreign = tmp_path / "list.pt"
    torch.save([1, 2], foreign)
    with pytest.raises(DataError, match="list.pt: .* holds a list"):
        CentreGuidedSplit(str(foreign), centre_net=tiny_net(1)).prepare_fit({})


def test_detector_with_offsets_feeds_votes_to_the_head(
    tiny_monuseg_root: Path, tmp_path: Path
) -> None:
    L.seed_everything(0)
    detector = CentreDetectorModule(tiny_net(3), offset_weight=1.0, tile_size=64, tile_overlap=16)
    bias = [m for m in detector.net.modules() if isinstance(m, torch.nn.Conv2d)][-1].bias
    assert bias[0] < -2.0 and torch.all(bias[1:] == 0)
    data = tiny_data(tiny_monuseg_root)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    outputs = detector.net(batch["image"])
    # The offset term is in the loss: the loss with it exceeds the heatmap's alone.
    with_offsets = detector.training_step(batch, 0)
    detector.hparams.offset_weight = 0.0
    heat_only = detector.training_step(batch, 0)
    assert outputs.shape[1] == 3 and float(with_offsets.detach()) > float(heat_only.detach()) > 0
    detector.hparams.offset_weight = 1.0
    trainer = short_trainer(tmp_path / "det", steps=2)
    trainer.fit(detector, datamodule=data)
    weights = tmp_path / "det.ckpt"
    trainer.save_checkpoint(weights)

    head = reading_head(weights, centre_votes=True, centre_net=tiny_net(3))
    short_trainer(tmp_path / "head", steps=1).fit(head, datamodule=tiny_data(tiny_monuseg_root))
    head.eval()
    images = torch.rand(1, 3, 64, 64)
    maps = head.postprocess.guide(images, 64, 16)
    assert maps.shape == (1, 3, 64, 64)
    assert maps[:, 0].min() >= 0.0 and maps[:, 0].max() <= 1.0
    assert head.predict_instances(images)[0].shape == (64, 64)


def test_offsets_and_votes_name_their_problems() -> None:
    with pytest.raises(ValueError, match="offset_weight must be >= 0"):
        CentreDetectorModule(tiny_net(3), offset_weight=-1.0)
    one_output = CentreDetectorModule(tiny_net(1), offset_weight=1.0)
    batch = {"image": torch.rand(2, 3, 32, 32), "instances": torch.zeros(2, 32, 32)}
    with pytest.raises(ValueError, match="3 outputs"):
        one_output.training_step(batch, 0)


def test_loader_workers_build_the_targets_the_step_would(
    tiny_monuseg_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    L.seed_everything(0)
    detector = CentreDetectorModule(
        tiny_net(3), offset_weight=1.0, tile_size=64, tile_overlap=16, loader_targets=True
    )
    data = MoNuSegDataModule(
        root=str(tiny_monuseg_root), crop_size=32, crops_per_epoch=8, batch_size=4, num_workers=2
    )
    trainer = short_trainer(tiny_monuseg_root.parent / "det", steps=2)

    def not_here(self: CentreTargets, instances: torch.Tensor) -> None:
        raise AssertionError("the training step built targets the loader should have")

    # Every step of the fit reads targets that its loader's two workers built.
    with monkeypatch.context() as patch:
        patch.setattr(CentreTargets, "batch", not_here)
        trainer.fit(detector, datamodule=data)
    # The fit handed the targets' description to the crop dataset before its workers began.
    assert data.train_dataset is not None
    assert data.train_dataset.crop_targets == detector.crop_targets
    batch = next(iter(data.train_dataloader()))
    keys = detector.crop_targets.keys
    assert set(keys) <= batch.keys()
    in_process = detector.crop_targets.batch(batch["instances"])
    for key in keys:
        torch.testing.assert_close(batch[key], in_process[key], rtol=0, atol=0)
    # The step reads the loader's targets, and gives the loss of targets built in the step
    # (a copy of the trained detector outside its trainer, which no longer takes logs).
    copy = CentreDetectorModule(tiny_net(3), offset_weight=1.0, tile_size=64, tile_overlap=16)
    copy.load_state_dict(detector.state_dict())
    copy.eval()
    from_loader = copy.training_step(batch, 0)
    without = {k: v for k, v in batch.items() if k not in keys}
    assert float(from_loader) == float(copy.training_step(without, 0)) > 0


def test_on_a_cpu_the_step_builds_the_targets(
    tiny_monuseg_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default a CPU fit keeps the targets in the step: the network's threads fill the
    cores, and loader workers building targets beside them slowed 150 steps on 2 cores."""
    built: list[int] = []
    step_batch = CentreTargets.batch

    def counted(self: CentreTargets, instances: torch.Tensor) -> dict[str, torch.Tensor]:
        built.append(len(instances))
        return step_batch(self, instances)

    monkeypatch.setattr(CentreTargets, "batch", counted)
    detector = CentreDetectorModule(tiny_net(3), offset_weight=1.0, tile_size=64, tile_overlap=16)
    data = tiny_data(tiny_monuseg_root)
    short_trainer(tiny_monuseg_root.parent / "cpu", steps=2).fit(detector, datamodule=data)
    assert built == [4, 4]
    assert data.train_dataset is not None and data.train_dataset.crop_targets is None


def test_validation_of_resampled_images_matches_centres_in_place(
    tiny_monuseg_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images at 0.5 µm/px for a detector at 0.25: the labels stay at 64 px, and their
    centroids are matched on the images' 128 px grid. Peaks at the centroids of the labels
    enlarged by repetition (an independent resize) match every one within 0.1 px."""
    stems = sorted(path.stem for path in (tiny_monuseg_root / "labels").iterdir())
    enlarged = []
    for stem in stems:
        labels = np.array(Image.open(tiny_monuseg_root / "labels" / f"{stem}.png"))
        enlarged.append(np.repeat(np.repeat(labels, 2, axis=0), 2, axis=1))
    model = CentreDetectorModule(tiny_net(1), radius=0.1, tile_size=64, tile_overlap=16)

    def centroids(images: torch.Tensor) -> list[np.ndarray]:
        assert tuple(images.shape[-2:]) == (128, 128)
        return [cell_points(enlarged.pop(0))[:, ::-1].copy()]  # (row, col), as peaks are

    monkeypatch.setattr(model, "_peaks", centroids)
    data = MoNuSegDataModule(
        root=str(tiny_monuseg_root), image_mpp=0.5, val_fraction=0.0, num_workers=0
    )
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    (metrics,) = trainer.validate(model, datamodule=data)
    assert not enlarged, "every image validated"
    assert metrics["val/precision"] == metrics["val/recall"] == 1.0


def test_fit_on_images_without_instance_maps_names_one(
    tmp_path: Path, make_monuseg_root: Callable[..., Path]
) -> None:
    root = make_monuseg_root(tmp_path / "r", labels=())
    model = CentreDetectorModule(tiny_net(1), tile_size=64, tile_overlap=16)
    trainer = short_trainer(tmp_path)
    with pytest.raises(DataError, match=r"img0\.tif: no labels or pseudo mask, and Centre"):
        trainer.fit(model, datamodule=tiny_data(root))
    assert trainer.global_step == 0
