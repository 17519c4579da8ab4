"""Bad input to the frozen-encoder stages of the CAM + SAM chain (configs/cam_sam/*encoder*):
the encoder's weights missing or not a SAM model, a checkpoint of another stage. Each is one
line ``protoseg: error: <file>: <problem>`` and exit status 2, before any image is encoded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.cli import main

ROOT = Path(__file__).resolve().parents[2]
CLASSIFIER = ROOT / "configs" / "cam_sam" / "classifier_encoder_wsss4luad.yaml"
HEAD = ROOT / "configs" / "cam_sam" / "segment_encoder_wsss4luad.yaml"
PSEUDO = ROOT / "configs" / "cam_sam" / "pseudo_wsss4luad.yaml"
WEIGHTS = "--model.init_args.net.init_args.embedder.init_args.checkpoint"


@pytest.fixture
def root(tmp_path: Path, make_wsss_root: Callable[..., Path]) -> Path:
    return make_wsss_root(tmp_path / "wsss", n_train=2, n_val=1, n_test=0, size=32)


def stage_checkpoint(path: Path, class_path: str) -> Path:
    """A Lightning checkpoint of ``class_path`` as the protoseg CLI writes one (no weights)."""
    state = {
        "state_dict": {},
        "pytorch-lightning_version": "2.6.0",
        "global_step": 3,
        "hyper_parameters": {"_class_path": class_path},
    }
    torch.save(state, path)
    return path


def pseudo_masks(root: Path, tmp_path: Path) -> Path:
    """A pseudo mask (all tumor) for every training image."""
    folder = tmp_path / "pseudo_masks"
    folder.mkdir()
    for image in (root / "training").glob("*.png"):
        size = Image.open(image).size
        Image.fromarray(np.zeros(size[::-1], np.uint8)).save(folder / image.name)
    return folder


def one_line_error(capsys: pytest.CaptureFixture, args: list[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("protoseg: error: "), err
    return err


def run_args(config: Path, root: Path, tmp_path: Path) -> list[str]:
    run = tmp_path / "run"
    return [
        f"--config={config}",
        f"--data.root={root}",
        "--data.num_workers=0",
        "--data.batch_size=1",
        "--data.crops_per_epoch=2",
        "--trainer.max_steps=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={run}",
        f"--trainer.logger.init_args.save_dir={run}",
        f"--trainer.callbacks.init_args.dirpath={run / 'checkpoints'}",
        f"--model.init_args.net.init_args.embedder.init_args.cache_dir={tmp_path / 'cache'}",
    ]


@pytest.mark.parametrize("config", [CLASSIFIER, HEAD])
def test_missing_encoder_weights_are_named(
    config: Path, root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing = tmp_path / "sam_vit_b.pth"
    extra = [f"--data.pseudo_mask_dir={pseudo_masks(root, tmp_path)}"] if config == HEAD else []
    err = one_line_error(
        capsys, ["fit", *run_args(config, root, tmp_path), *extra, f"{WEIGHTS}={missing}"]
    )
    assert f"{missing}: " in err and "does not exist" in err
    assert not (tmp_path / "cache").exists()


def test_encoder_weights_that_are_not_sam_are_named(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, foreign)
    err = one_line_error(
        capsys, ["fit", *run_args(CLASSIFIER, root, tmp_path), f"{WEIGHTS}={foreign}"]
    )
    assert f"{foreign}: not a Segment Anything checkpoint" in err
    assert not list((tmp_path / "cache").glob("*.npy"))


def test_a_checkpoint_of_another_stage_is_named(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    classifier = stage_checkpoint(
        tmp_path / "classifier.ckpt",
        "protoseg.lightning_modules.cam_classifier.CAMClassifierModule",
    )
    head = stage_checkpoint(
        tmp_path / "head.ckpt", "protoseg.lightning_modules.semantic.SemanticSegmentationModule"
    )
    # The classifier's checkpoint given to the head's predict.
    err = one_line_error(
        capsys,
        [
            "predict",
            *run_args(HEAD, root, tmp_path),
            f"--ckpt_path={classifier}",
            f"--output_dir={tmp_path / 'out'}",
        ],
    )
    assert f"{classifier}: holds a CAMClassifierModule checkpoint" in err
    assert "SemanticSegmentationModule" in err
    # The head's checkpoint given to the pseudo-mask stage as its classifier.
    err = one_line_error(
        capsys,
        [
            "validate",
            f"--config={PSEUDO}",
            f"--data.root={root}",
            "--data.num_workers=0",
            f"--model.init_args.classifier_ckpt={head}",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path / 'pseudo'}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'pseudo'}",
            f"--trainer.callbacks.init_args.dirpath={tmp_path / 'pseudo' / 'checkpoints'}",
        ],
    )
    assert f"{head}: holds a SemanticSegmentationModule checkpoint" in err
    assert "CAMClassifierModule" in err
