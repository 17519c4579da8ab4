"""The CAM + SAM chain end to end on a tiny WSSS4LUAD-layout root: classifier fit -> CAM and
CAM + SAM pseudo masks (validate and predict) -> semantic head fit on them -> predictions; the
pseudo masks scored under DDP (two gloo processes) as by one process; bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cpu_trainer
from PIL import Image

from protoseg.chain import main as chain_main
from protoseg.cli import main
from protoseg.datamodules.wsss import WSSSDataModule
from protoseg.lightning_modules.cam_classifier import CAMClassifierModule
from protoseg.lightning_modules.cam_sam import CamSamPseudoMaskModule, load_classifier
from protoseg.modules.cam import CAMNet
from protoseg.modules.frozen_heads import EncoderCAMNet

ROOT = Path(__file__).resolve().parents[2]
CLASSIFIER = ROOT / "configs" / "cam_sam" / "classifier_wsss4luad.yaml"
PSEUDO = ROOT / "configs" / "cam_sam" / "pseudo_wsss4luad.yaml"
CHAIN = ROOT / "configs" / "chains" / "wsss4luad_camsam.yaml"
PSEUDO_STEPS = ("cam pseudo masks validation", "cam sam pseudo masks validation", "pseudo masks")
# Small regions prompted: the tiny images' CAM regions are a few pixels wide.
FAST = ("min_region=4",)
# A timm test network (370k parameters) stands in for ResNet-18.
TINY_NET = [
    "--model.init_args.net.init_args.backbone=test_resnet",
    "--model.init_args.net.init_args.input_scale=1.0",
]


def short_fit(config: Path, run_dir: Path, root: Path, *extra: str) -> Path:
    """Fits ``config`` for 2 steps on ``root`` into ``run_dir``; returns its last.ckpt."""
    main(
        [
            "fit",
            f"--config={config}",
            f"--data.root={root}",
            "--data.crop_size=32",
            "--data.crops_per_epoch=4",
            "--data.batch_size=2",
            "--data.num_workers=0",
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={run_dir}",
            f"--trainer.logger.init_args.save_dir={run_dir}",
            f"--trainer.callbacks.init_args.dirpath={run_dir / 'checkpoints'}",
            *extra,
        ]
    )
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture
def wsss_root(tmp_path: Path, make_wsss_root: Callable[..., Path]) -> Path:
    return make_wsss_root(tmp_path / "wsss", layout="luad", n_train=4, n_val=2, n_test=0, size=48)


def pseudo_args(root: Path, ckpt: Path, tmp_path: Path, sam: bool) -> list[str]:
    return [
        f"--config={PSEUDO}",
        f"--data.root={root}",
        "--data.num_workers=0",
        f"--model.init_args.classifier_ckpt={ckpt}",
        f"--model.init_args.sam={str(sam).lower()}",
        "--model.init_args.rotations=2",
        "--model.init_args.min_region=4",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path / 'pseudo'}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'pseudo'}",
        f"--trainer.callbacks.init_args.dirpath={tmp_path / 'pseudo' / 'checkpoints'}",
    ]


def test_chain_end_to_end(wsss_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/chains/wsss4luad_camsam.yaml at tiny size, with LiteMedSAM's frozen encoder:
    every step runs, the encoder embeds each image once (cached in the run folder, read by
    the later steps), the pseudo masks respect the image-level labels, the CAMs are written,
    the head predicts."""
    monkeypatch.chdir(ROOT)
    run_dir = tmp_path / "chain"
    args = [
        str(CHAIN),
        "--run_dir",
        str(run_dir),
        f"--data.root={wsss_root}",
        "--data.crop_size=32",
        "--data.crops_per_epoch=4",
        "--data.batch_size=2",
        "--data.num_workers=0",
        "--trainer.max_steps=2",
        "--trainer.enable_progress_bar=false",
        *(f"--step-arg={step}=--model.init_args.{arg}" for step in PSEUDO_STEPS for arg in FAST),
        "--step-arg=predictions=--data.predict_dir=val",
    ]
    assert chain_main(args) == 0
    result = json.loads((run_dir / "result.json").read_text())
    assert set(result["steps"]["cam sam pseudo masks validation"]["metrics"]) >= {"miou", "fwiou"}
    classifier = load_classifier(run_dir / "classifier" / "checkpoints" / "last.ckpt")
    assert isinstance(classifier.net, EncoderCAMNet) and not classifier.training
    # Each image embedded once: the 4 training images as the fits see them (resized, one
    # view) and as they are (pseudo masks), and the 2 validation images at each of the
    # classifier's 4 turns (val_rotations: its label-free CAMs score and predict them).
    assert len(list((run_dir / "sam_embeddings").glob("*.npy"))) == 4 + 4 + 2 * 4
    assert result["steps"]["cam sam pseudo masks validation"]["metrics"]["sam_prompts"] > 0
    masks = run_dir / "pseudo_masks"
    cam_dir = run_dir / "logs" / "pseudo_masks" / "cams"
    for image_path in sorted((wsss_root / "training").glob("*.png")):
        # WSSSDataModule names each record by its file's stem, label included.
        codes = np.array(Image.open(masks / f"{image_path.stem}.png"))
        label = [int(v) for v in image_path.stem.rsplit("[", 1)[1].rstrip("]").split(",")]
        assert codes.shape == np.array(Image.open(image_path)).shape[:2]
        assert set(np.unique(codes).tolist()) <= {0, 1, 2, 3, 255}
        absent = [k for k in range(3) if not label[k]]
        assert not np.isin(codes, absent).any()  # no class outside the image-level label
        cams = np.load(cam_dir / f"{image_path.stem}.npy")
        assert cams.dtype == np.float16 and cams.shape == (3, *codes.shape)
        assert float(cams.max()) <= 1.0 and (cam_dir / f"{image_path.stem}.png").is_file()
    assert sorted(p.name for p in (run_dir / "predictions").glob("??.png")) == ["00.png", "01.png"]


def test_classifier_needs_image_level_labels() -> None:
    module = CAMClassifierModule(CAMNet("test_resnet", 3, adl_stages=(4,), output_stride=32))
    with pytest.raises(ValueError, match="image-level labels"):
        module.training_step({"image": torch.zeros(1, 3, 32, 32)}, 0)
    with pytest.raises(ValueError, match="net has 2 classes, class_names 3"):
        CAMClassifierModule(CAMNet("test_resnet", 2, adl_stages=(4,)), class_names=["a", "b", "c"])


def test_bad_inputs_are_named_in_one_line(
    tmp_path: Path, make_wsss_root: Callable[..., Path], capsys: pytest.CaptureFixture
) -> None:
    root = make_wsss_root(tmp_path / "wsss", n_train=2, n_val=1, n_test=0, size=32)
    bad = next((root / "training").glob("*.png"))
    bad.rename(bad.with_name(bad.name.replace("]", ", 7]")))
    with pytest.raises(SystemExit) as stopped:
        short_fit(CLASSIFIER, tmp_path / "run", root, *TINY_NET)
    assert stopped.value.code == 2
    assert "image-level label" in capsys.readouterr().err
    missing = tmp_path / "nothing.ckpt"
    with pytest.raises(SystemExit):
        main(["validate", *pseudo_args(root, missing, tmp_path, sam=False)])
    err = capsys.readouterr().err
    assert f"{missing}: classifier checkpoint (classifier_ckpt) file does not exist" in err
    with pytest.raises(SystemExit):
        main(
            [
                "validate",
                *pseudo_args(root, missing, tmp_path, sam=True),
                f"--model.init_args.sam_checkpoint={tmp_path / 'sam.pth'}",
            ]
        )
    err = capsys.readouterr().err
    assert "file does not exist" in err and err.count("\n") == 1


# ~3 minutes of CPU on a loaded 2-core machine (two spawned processes): slow.
@pytest.mark.slow
def test_two_process_validation_equals_one_process(
    tmp_path: Path, make_wsss_root: Callable[..., Path]
) -> None:
    """Each rank scores its share of the validation images; the confusion matrix and the SAM
    counts are summed across ranks."""
    root = make_wsss_root(tmp_path / "wsss", n_train=2, n_val=3, n_test=0, size=40)
    ckpt = short_fit(CLASSIFIER, tmp_path / "classifier", root, *TINY_NET)

    def score(devices: int) -> dict[str, float]:
        module = CamSamPseudoMaskModule(str(ckpt), sam=False, rotations=2)
        data = WSSSDataModule(str(root), num_workers=0)
        metrics = cpu_trainer(devices).validate(module, datamodule=data, verbose=False)[0]
        return {k: v for k, v in metrics.items() if k.startswith("val/")}

    one, two = score(1), score(2)
    assert {"val/miou", "val/fwiou", "val/iou_tumor", "val/sam_prompts"} <= set(one)
    for key, value in one.items():
        assert two[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
