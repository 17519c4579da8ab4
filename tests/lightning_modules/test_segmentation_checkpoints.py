"""Checkpoints of the segmentation head: a head with a centre detector validates without the
detector's file, and heads saved before post-processing was a part still load."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from test_cli import tiny_overrides

from protoseg.cli import build_cli, main
from protoseg.lightning_modules.legacy import upgrade_segmentation_checkpoint
from protoseg.lightning_modules.segmentation import SegmentationModule
from protoseg.modules.networks import UNet
from protoseg.postprocess import CentreGuidedSplit, DistanceSplit, ThreeClassWatershed

CHANNELS = [16, 16, 8, 8, 8]
UNET = "protoseg.modules.networks.UNet"


def tiny_net(classes: int = 3) -> UNet:
    return UNet("resnet18", num_classes=classes, decoder_channels=tuple(CHANNELS))


def net_spec(classes: int = 3) -> dict:
    return {"class_path": UNET, "init_args": {"num_classes": classes, "decoder_channels": CHANNELS}}


def save_detector(path: Path, offset_weight: float = 1.0) -> Path:
    """A detector checkpoint as the CLI writes it (network config, offsets trained)."""
    state = {f"net.{k}": v for k, v in tiny_net(3).state_dict().items()}
    hparams = {"net": net_spec(3), "offset_weight": offset_weight}
    torch.save({"hyper_parameters": hparams, "state_dict": state}, path)
    return path


def test_a_head_validates_without_its_detector_s_file(
    tiny_monuseg_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The head's config names only the detector's checkpoint; the fitted head's checkpoint
    keeps the detector's network config and weights, so it validates once the file is gone.
    Where the file is there and says its offsets were not trained, the head's votes are
    refused in one line (exit 2)."""
    detector = save_detector(tmp_path / "detector.ckpt")
    run_dir = tmp_path / "run"
    args = [
        *tiny_overrides(tiny_monuseg_root, run_dir),
        "--model.postprocess=protoseg.postprocess.centre_guided.CentreGuidedSplit",
        f"--model.postprocess.detector={detector}",
        "--model.postprocess.centre_votes=true",
        "--model.postprocess.foreground_threshold=[0.4,0.6]",
        "--trainer.limit_val_batches=0",
    ]
    build_cli(["fit", *args, "--trainer.max_steps=1"])
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["hyper_parameters"]["postprocess"]["init_args"]["centre_net"] == net_spec(3)
    trained = {k: v for k, v in saved["state_dict"].items() if k.startswith("postprocess.")}
    assert len(trained) > 10
    detector.unlink()
    cli = build_cli(["validate", *args[:-1], f"--ckpt_path={last}"])
    assert isinstance(cli.model.postprocess, CentreGuidedSplit)
    assert cli.model.postprocess.thresholds == (0.4, 0.6)
    assert {"val/aji", "val/pq"} <= cli.trainer.callback_metrics.keys()
    restored = SegmentationModule.load_from_checkpoint(last)
    for key, value in trained.items():
        torch.testing.assert_close(restored.state_dict()[key], value)
    save_detector(detector, offset_weight=0.0)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(["validate", *args[:-1], f"--ckpt_path={last}"])
    assert stopped.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line == (
        f"protoseg: error: {detector}: the detector was trained without centre offsets "
        "(offset_weight: 0.0), and centre_votes reads them: set centre_votes: false, or fit "
        "the detector with offset_weight > 0"
    )


def legacy_checkpoint(module: SegmentationModule, path: Path, **flags: object) -> Path:
    """``module`` saved as protoseg up to e596ce4 saved a head: its post-processing as flags
    of the module, its detector's weights as ``centre_net.*``."""
    hparams = {
        "_class_path": "protoseg.lightning_modules.segmentation.SegmentationModule",
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
        "net": net_spec(3),
        "tile_size": 64,
        "tile_overlap": 16,
        "marker_threshold": 0.5,
        "foreground_threshold": 0.5,
        "min_area": 10,
        "min_peak_probability": None,
        "instance_split": "three_class",
        "min_distance": 5,
        "outline_opening": 0,
        "centre_net": None,
        "centre_weights": None,
        "centre_offset": 0.25,
        "centre_votes": False,
        **flags,
    }
    state = {k.removeprefix("postprocess."): v for k, v in module.state_dict().items()}
    torch.save(
        {
            "hyper_parameters": hparams,
            "state_dict": state,
            "pytorch-lightning_version": L.__version__,
        },
        path,
    )
    return path


@pytest.mark.parametrize(
    ("flags", "kind"),
    [
        ({}, ThreeClassWatershed),
        (
            {"instance_split": "distance", "min_distance": 7, "foreground_threshold": 0.6},
            DistanceSplit,
        ),
        (
            {
                "instance_split": "distance",
                "centre_net": net_spec(3),
                "centre_weights": "/gone/detector.ckpt",
                "centre_votes": True,
                "foreground_threshold": [0.3, 0.6],
                "min_peak_probability": 0.9,
                "outline_opening": 2,
            },
            CentreGuidedSplit,
        ),
    ],
    ids=["three_class", "distance", "centre_guided"],
)
def test_an_old_checkpoint_reads_as_the_strategy_it_amounts_to(
    flags: dict, kind: type, tmp_path: Path
) -> None:
    split = {
        ThreeClassWatershed: lambda: ThreeClassWatershed(),
        DistanceSplit: lambda: DistanceSplit(min_distance=7, foreground_threshold=0.6),
        CentreGuidedSplit: lambda: CentreGuidedSplit(
            centre_net=tiny_net(3),
            centre_votes=True,
            foreground_threshold=[0.3, 0.6],
            min_peak_probability=0.9,
            outline_opening=2,
        ),
    }[kind]()
    torch.manual_seed(0)
    module = SegmentationModule(
        tiny_net(3), postprocess=split, tile_size=64, tile_overlap=16
    ).eval()
    path = legacy_checkpoint(module, tmp_path / "old.ckpt", **flags)
    restored = SegmentationModule.load_from_checkpoint(path).eval()
    assert type(restored.postprocess) is kind
    for name in ("thresholds", "min_area", "min_peak_probability", "outline_opening"):
        assert getattr(restored.postprocess, name) == getattr(split, name), name
    for key, value in module.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_array_equal(
            restored.predict_instances(images)[0], module.predict_instances(images)[0]
        )
    saved = torch.load(path, weights_only=False)
    assert "instance_split" in saved["hyper_parameters"], "the file is left as it is"
    assert upgrade_segmentation_checkpoint(saved) == kind.__name__
    assert upgrade_segmentation_checkpoint(saved) is None, "an upgraded checkpoint stays"


def test_protoseg_validate_reads_an_old_checkpoint(
    tiny_monuseg_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI merges the old flags, read as their strategy, over the config's and says so
    in one line; the figures are those of the same head validated in Python."""
    torch.manual_seed(0)
    split = DistanceSplit(min_distance=7, foreground_threshold=0.6, outline_opening=1)
    module = SegmentationModule(tiny_net(3), postprocess=split, tile_size=64, tile_overlap=16)
    flags = {"instance_split": "distance", "min_distance": 7, "foreground_threshold": 0.6}
    path = legacy_checkpoint(module, tmp_path / "old.ckpt", outline_opening=1, **flags)
    args = [*tiny_overrides(tiny_monuseg_root, tmp_path / "run"), "--trainer.logger=false"]
    capsys.readouterr()
    cli = build_cli(["validate", *args, f"--ckpt_path={path}"])
    err = capsys.readouterr().err
    assert (
        f"protoseg: {path}: saved before post-processing was a part; its post-processing "
        "flags read as postprocess: DistanceSplit" in err
    )
    assert isinstance(cli.model.postprocess, DistanceSplit)
    assert (cli.model.postprocess.min_distance, cli.model.postprocess.outline_opening) == (7, 1)
    figures = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    data = cli.datamodule
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    (expected,) = trainer.validate(module, datamodule=data)
    assert figures == pytest.approx(expected, abs=0)


def test_another_stage_s_settings_are_not_read_as_a_head_s() -> None:
    """A PSM checkpoint's own min_area / min_distance stay its own (protoseg validate and the
    chain's pseudo masks read it with --ckpt_path)."""
    from protoseg.lightning_modules.legacy import upgrade_segmentation_hparams

    psm = {"_class_path": "protoseg.lightning_modules.psm.PSMModule", "min_area": 30}
    assert upgrade_segmentation_hparams(psm) is None and psm["min_area"] == 30
    head = {"_class_path": "protoseg.lightning_modules.segmentation.SegmentationModule"}
    assert upgrade_segmentation_hparams({**head, "min_area": 30}) == "ThreeClassWatershed"
