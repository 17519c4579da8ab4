"""The protoseg command: fit, predict --output_dir, resume, --print_config, rebuild."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protoseg.cli import build_cli, main, model_options
from protoseg.io.checkpoints import read_checkpoint
from protoseg.io.errors import DataError
from protoseg.lightning_modules.psm import PSMModule
from protoseg.lightning_modules.segmentation import SegmentationModule
from protoseg.modules.activation_net import ShallowActivationNet
from protoseg.modules.ssl_augment import PathologyViewAugment
from protoseg.postprocess import SamRefinement

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_overrides(root: Path, run_dir: Path) -> list[str]:
    """Shrinks the supervised head config to seconds: small net, few crops, one step."""
    return [
        f"--config={CONFIGS / 'monuseg' / 'segment.yaml'}",
        f"--data.root={root}",
        "--data.crop_size=32",
        "--data.crops_per_epoch=4",
        "--data.batch_size=2",
        "--model.net.decoder_channels=[16,16,8,8,8]",
        "--model.tile_size=64",
        "--model.tile_overlap=16",
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger.init_args.save_dir={run_dir}",
        f"--trainer.callbacks.init_args.dirpath={run_dir / 'checkpoints'}",
        "--trainer.enable_progress_bar=false",
    ]


def test_fit_then_predict_writes_instance_maps(
    tiny_monuseg_root: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    main(
        [
            "fit",
            *tiny_overrides(tiny_monuseg_root, run_dir),
            "--trainer.max_steps=2",
            "--trainer.check_val_every_n_epoch=1",
        ]
    )
    # Quiet by default: none of the lines Lightning prints on every run that no user acts on.
    printed = "".join(capfd.readouterr())
    for noise in ("Tip:", "litlogger", "GPU available", "_pytree", "LeafSpec", "Seed set"):
        assert noise not in printed, noise
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert any((run_dir / "tensorboard").rglob("events.out.tfevents.*"))

    out = tmp_path / "predictions"
    main(
        [
            "predict",
            *tiny_overrides(tiny_monuseg_root, run_dir),
            f"--ckpt_path={last}",
            f"--output_dir={out}",
        ]
    )
    images = sorted((tiny_monuseg_root / "images").iterdir())
    for image in images:
        written = np.array(Image.open(out / f"{image.stem}.png"))
        assert written.dtype == np.uint16
        assert written.shape == np.array(Image.open(image)).shape[:2]
        assert (out / f"{image.stem}_overlay.png").is_file()
        assert (out / f"{image.stem}.geojson").is_file()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))

    # Inputs at 0.5 µm/px: the model sees them at twice the size, the files keep theirs.
    enlarged = tmp_path / "predictions_20x"
    main(
        [
            "predict",
            *tiny_overrides(tiny_monuseg_root, run_dir),
            f"--ckpt_path={last}",
            f"--output_dir={enlarged}",
            "--data.image_mpp=0.5",
        ]
    )
    for image in images:
        written = np.array(Image.open(enlarged / f"{image.stem}.png"))
        assert written.shape == np.array(Image.open(image)).shape[:2]

    # Segment Anything refinement turned on for a prediction (no checkpoint holds it): the
    # map written is the refinement of the split's map on the image's pixels; a missing
    # SAM checkpoint is one line, status 2. (A distance split: the 2-step head's boundary
    # class finds no nuclei.)
    first = images[0]
    (tmp_path / "one" / "images").mkdir(parents=True)
    shutil.copy(first, tmp_path / "one" / "images")
    predict = ["predict", *tiny_overrides(tmp_path / "one", run_dir), f"--ckpt_path={last}"]
    predict += [
        "--model.postprocess=DistanceSplit",
        "--model.postprocess.foreground_threshold=0.68",
    ]
    refine = ["--model.refine=SamRefinement", "--model.refine.progress=false"]
    split, refined = tmp_path / "split", tmp_path / "refined"
    main([*predict, f"--output_dir={split}"])
    main([*predict, f"--output_dir={refined}", *refine])
    objects = np.array(Image.open(split / f"{first.stem}.png")).astype(np.int32)
    expected = SamRefinement(progress=False)(np.array(Image.open(first).convert("RGB")), objects)
    drawn = np.array(Image.open(refined / f"{first.stem}.png"))
    assert objects.max() > 3 and (drawn != objects).any()
    np.testing.assert_array_equal(drawn, expected)
    missing = tmp_path / "sam.pth"
    with pytest.raises(SystemExit) as stopped:
        main(
            [
                *predict,
                f"--output_dir={tmp_path / 'no'}",
                *refine,
                f"--model.refine.checkpoint={missing}",
            ]
        )
    assert stopped.value.code == 2
    message = capfd.readouterr().err.strip().splitlines()[-1]
    assert (
        message == f"protoseg: error: {missing}: no such SAM checkpoint (SamRefinement checkpoint)"
    )

    model = SegmentationModule.load_from_checkpoint(last)
    assert type(model.net).__name__ == "UNet", "the CLI's class_path config rebuilds the net"


def test_resume_from_last_checkpoint(tiny_monuseg_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = tiny_overrides(tiny_monuseg_root, run_dir)
    main(["fit", *args, "--trainer.max_steps=2", "--trainer.limit_val_batches=0"])
    main(
        [
            "fit",
            *args,
            "--trainer.max_steps=4",
            "--trainer.limit_val_batches=0",
            f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        ]
    )
    state = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 4


def test_model_options_keeps_each_model_option_with_its_value() -> None:
    argv = ["validate", "--config", "c.yaml", "--model.init_args.min_area", "3"]
    argv += ["--model.min_distance=4", "--data.root", "x", "--model", "m.yaml"]
    assert model_options(argv) == [
        "--model.init_args.min_area",
        "3",
        "--model.min_distance=4",
        "--model",
        "m.yaml",
    ]


def test_command_line_model_options_win_over_the_checkpoint(
    tiny_monuseg_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    args = tiny_overrides(tiny_monuseg_root, run_dir)
    main(["fit", *args, "--model.warmup_steps=7", "--trainer.max_steps=1"])
    capsys.readouterr()
    last = f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    # Before the fix LightningCLI put the checkpoint's min_area (10) back over this option.
    cli = build_cli(
        ["validate", *args, last, "--model.init_args.postprocess.init_args.min_area", "3"]
    )
    assert cli.model.postprocess.min_area == 3
    # The checkpoint's own setting stays over the config file's (30), and is named.
    assert cli.model.hparams.warmup_steps == 7
    notice = [line for line in capsys.readouterr().err.splitlines() if "checkpoint's" in line]
    assert notice == [
        "protoseg: the checkpoint's model settings replace the config's for warmup_steps "
        "(set one with --model.NAME VALUE)"
    ]


def test_print_config_and_bad_config(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "protoseg.cli",
            "fit",
            f"--config={CONFIGS / 'monuseg' / 'segment.yaml'}",
            "--print_config",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "SegmentationModule" in done.stdout and "MoNuSegDataModule" in done.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "model:\n  class_path: protoseg.lightning_modules.segmentation.SegmentationModule\n"
        "  init_args:\n    no_such_option: 1\n"
    )
    failed = subprocess.run(
        [sys.executable, "-m", "protoseg.cli", "fit", f"--config={bad}"],
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0
    assert "no_such_option" in failed.stderr


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict"])
def test_subcommands_have_help(command: str) -> None:
    """Each leads with its usage line and the data root, and --data lists our datamodules."""
    done = subprocess.run(
        [sys.executable, "-m", "protoseg", command, "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ("--output_dir" in done.stdout) == (command == "predict")
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"usage: protoseg {command} --config CONFIG")
    assert "--data.root DIR is the data" in " ".join(lines[:6])
    known = " ".join(done.stdout.split("--data CONFIG")[-1].split())
    assert "MoNuSegDataModule" in known.replace(" ", "")
    assert "LightningCLI's args parameter" not in done.stderr


def test_bad_input_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing images folder stops the run with status 2 and the path, not a traceback;
    PROTOSEG_TRACEBACK=1 raises the error itself."""
    monkeypatch.delenv("PROTOSEG_TRACEBACK", raising=False)
    args = ["predict", *tiny_overrides(tmp_path / "nowhere", tmp_path / "run")]
    args.append("--allow_random_weights=true")
    with pytest.raises(SystemExit) as stopped:
        main([*args, f"--output_dir={tmp_path / 'out'}"])
    assert stopped.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    missing = tmp_path / "nowhere" / "images"
    assert message == f"protoseg: error: {missing}: images folder does not exist"
    monkeypatch.setenv("PROTOSEG_TRACEBACK", "1")
    with pytest.raises(DataError, match="images folder does not exist"):
        main([*args, f"--output_dir={tmp_path / 'out'}"])


def test_stages_take_the_datamodule_s_normalization(tiny_monuseg_root: Path) -> None:
    """The datamodule's mean and std are the one source of a stage's normalization and of
    its view augmentation's; PSM views normalised otherwise than its images are refused."""
    mean, std = [0.6, 0.5, 0.7], [0.2, 0.25, 0.15]
    given = [f"--data.root={tiny_monuseg_root}", f"--data.mean={mean}", f"--data.std={std}"]
    psm = build_cli(
        [f"--config={CONFIGS / 'psm/monuseg.yaml'}", *given, "--trainer.logger=false"], run=False
    )
    np.testing.assert_allclose(psm.model.hparams.normalization, [mean, std])
    np.testing.assert_allclose(psm.model.augment.mean.flatten(), mean)
    np.testing.assert_allclose(psm.model.augment.std.flatten(), std)
    head = build_cli(
        [*tiny_overrides(tiny_monuseg_root, Path("unused")), *given[1:], "--trainer.logger=false"],
        run=False,
    )
    np.testing.assert_allclose(head.model.hparams.normalization, [mean, std])
    views = PathologyViewAugment(size=32, mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="augment normalises the views with mean"):
        PSMModule(ShallowActivationNet("resnet18", out_indices=(0, 1)), augment=views)


def test_predict_keeps_the_fits_config_and_a_failed_start_leaves_nothing(
    tiny_monuseg_root: Path, tmp_path: Path
) -> None:
    """With the logger off every stage saves its config in the run folder: predict's goes
    to predict_config.yaml, never over the config.yaml the checkpoint was trained with."""
    run_dir = tmp_path / "run"
    args = [*tiny_overrides(tiny_monuseg_root, run_dir), "--trainer.logger=false"]
    main(["fit", *args, "--trainer.max_steps=1", "--trainer.limit_val_batches=0"])
    config = (run_dir / "config.yaml").read_bytes()
    ckpt = f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    main(["predict", *args, ckpt, f"--output_dir={tmp_path / 'out'}"])
    assert (run_dir / "config.yaml").read_bytes() == config
    assert (run_dir / "predict_config.yaml").is_file()
    # A run that fails at its first batch (an image broken after the fit) takes the log
    # folder it made with it.
    fresh = tmp_path / "fresh"
    broken = tiny_monuseg_root / "images" / "img1.png"
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(SystemExit):
        main(["fit", *tiny_overrides(tiny_monuseg_root, fresh), "--data.cache_images=false"])
    assert not fresh.exists()
