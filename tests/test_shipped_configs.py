"""Every shipped stage config runs end to end (fit, then predict) with a tiny override."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from protoseg.cli import main
from protoseg.commands import run_command
from protoseg.modules.backbones import TimmBackbone, save_encoder_checkpoint
from protoseg.modules.networks import UNet

ROOT = Path(__file__).resolve().parents[1]
# Section presets, passed beside a stage config (``--config configs/trainer/X.yaml``,
# ``--data configs/wsi/X.yaml``, ``--config configs/refine/X.yaml``), are not stage configs; the
# WSI data fragment runs end to end in tests/callbacks/test_slide_writer.py, the refinement in
# tests/test_cli.py. Chain files (configs/chains) are tested in tests/test_chain.py.
SECTION_PRESET_DIRS = ("trainer", "wsi", "chains", "refine")
STAGE_CONFIGS = sorted(
    p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name not in SECTION_PRESET_DIRS
)
TRAINER_PRESETS = sorted((ROOT / "configs" / "trainer").glob("*.yaml"))


def test_every_config_is_listed() -> None:
    names = {p.relative_to(ROOT / "configs").as_posix() for p in STAGE_CONFIGS}
    assert {
        "quickstart/psm.yaml",
        "quickstart/segment.yaml",
        "monuseg/segment.yaml",
        "patch_contrast/monuseg.yaml",
        "patch_contrast/segment_monuseg.yaml",
    } <= names


def predict_only(config: Path) -> bool:
    """A stage that reads a trained stage's checkpoint from its config and never fits (the CAM
    + SAM pseudo masks); tests/lightning_modules/test_cam_sam_chain.py runs it end to end."""
    return "classifier_ckpt" in yaml.safe_load(config.read_text())["model"]["init_args"]


@pytest.mark.parametrize("config", STAGE_CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_checkpoint_callback_comes_last(config: Path) -> None:
    """Overrides of ``--trainer.callbacks.init_args.*`` reach the last callback of the list."""
    if predict_only(config):
        pytest.skip("a stage that trains nothing has no checkpoint")
    callbacks = yaml.safe_load(config.read_text())["trainer"]["callbacks"]
    assert callbacks[-1]["class_path"].endswith("ModelCheckpoint")
    assert callbacks[-1]["init_args"]["save_last"] is True


@pytest.mark.parametrize("preset", TRAINER_PRESETS, ids=lambda p: p.stem)
def test_trainer_presets_only_set_trainer_keys(preset: Path) -> None:
    assert set(yaml.safe_load(preset.read_text())) == {"trainer"}


def test_the_refine_preset_turns_sam_on_beside_a_heads_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """configs/refine/sam.yaml sets the head's refine part only, and beside the PSM head's
    config it is the part's own defaults (what make bench-psm-sam measures)."""
    preset = ROOT / "configs" / "refine" / "sam.yaml"
    assert yaml.safe_load(preset.read_text())["model"].keys() == {"init_args"}
    assert yaml.safe_load(preset.read_text())["model"]["init_args"].keys() == {"refine"}
    head = ROOT / "configs" / "psm" / "segment_monuseg.yaml"
    with pytest.raises(SystemExit):
        main(["predict", f"--config={head}", f"--config={preset}", "--print_config"])
    refine = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["refine"]
    from protoseg.postprocess.sam_refine import SamRefinement

    defaults = SamRefinement()
    assert refine["class_path"] == "protoseg.postprocess.sam_refine.SamRefinement"
    for name in ("checkpoint", "margin", "tile_overlap", "decoder_window"):
        assert refine["init_args"][name] == getattr(defaults, name), name


def prototype_stage(config: Path) -> bool:
    """Whether a stage config is the prototype stage (two predict passes, nothing trains)."""
    model = yaml.safe_load(config.read_text())["model"]["class_path"]
    return model.endswith("PrototypeModule")


def uniform_pseudo_masks(root: Path, tmp_path: Path) -> Path:
    """Class-code pseudo masks of a WSSS root's training images: stroma (1), the top rows
    unsure (255)."""
    folder = tmp_path / "tissue_pseudo"
    folder.mkdir()
    train = next(p for p in (root / "training", root / "train") if p.is_dir())
    for image in train.glob("*.png"):
        width, height = Image.open(image).size
        codes = np.ones((height, width), np.uint8)
        codes[: height // 4] = 255
        Image.fromarray(codes).save(folder / image.name)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("config", STAGE_CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_config_runs_end_to_end(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    data_args = yaml.safe_load(config.read_text())["data"]["init_args"]
    data_root = Path(data_args["root"])
    if predict_only(config):
        pytest.skip(f"{config.name} never fits (see tests/lightning_modules/test_cam_sam_chain.py)")
    if not data_root.is_dir():
        pytest.skip(f"{config.name}: data root {data_root} is absent")
    if prototype_stage(config):
        run_prototype_stage(config, tmp_path)
        return
    data_class = yaml.safe_load(config.read_text())["data"]["class_path"]
    tissue = data_class.endswith("WSSSDataModule")
    # A chained config reads an earlier stage's pseudo masks; true instance maps stand in (for
    # tissue, masks of one class with an unsure band).
    pseudo = (
        [f"--data.pseudo_mask_dir={data_root / 'labels'}"] if "pseudo_mask_dir" in data_args else []
    )
    if tissue and pseudo:
        pseudo = [f"--data.pseudo_mask_dir={uniform_pseudo_masks(data_root, tmp_path)}"]
    run_dir = tmp_path / "run"
    # A head that reads a centre detector (configs/psm/segment_monuseg.yaml) gets a checkpoint
    # of a freshly built detector of the detector config's own network.
    postprocess = yaml.safe_load(config.read_text())["model"]["init_args"].get("postprocess", {})
    if "detector" in postprocess.get("init_args", {}):
        detector = yaml.safe_load((ROOT / "configs/psm/detect_monuseg.yaml").read_text())
        spec = detector["model"]["init_args"]["net"]
        weights = tmp_path / "detector.ckpt"
        state = {f"net.{k}": v for k, v in UNet(**spec["init_args"]).state_dict().items()}
        torch.save(
            {"hyper_parameters": {"net": spec, "offset_weight": 1.0}, "state_dict": state}, weights
        )
        pseudo.append(f"--model.init_args.postprocess.init_args.detector={weights}")
    # SSL configs read a tile folder: no labels, no validation split, nothing to predict; their
    # fit ends by exporting the encoder the other stages load.
    ssl = data_class.endswith("TileFolderDataModule")
    tiny = [
        f"--config={config}",
        f"--config={ROOT / 'configs/trainer/cpu.yaml'}",
        "--data.crop_size=64",
        "--data.crops_per_epoch=4",
        "--data.batch_size=2",
        "--data.num_workers=0",
        *([] if ssl or tissue else ["--data.val_fraction=0.1"]),
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger.init_args.save_dir={run_dir}",
        # Every stage config lists its ModelCheckpoint last (save_last: true).
        f"--trainer.callbacks.init_args.dirpath={run_dir / 'ckpt'}",
        "--trainer.enable_progress_bar=false",
        *pseudo,
    ]
    main(
        [
            "fit",
            *tiny,
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            "--trainer.check_val_every_n_epoch=1",
        ]
    )
    if ssl:
        assert (run_dir / "encoder.ckpt").is_file()
        return
    out = tmp_path / "predictions"
    main(
        [
            "predict",
            *tiny,
            f"--ckpt_path={run_dir / 'ckpt' / 'last.ckpt'}",
            f"--output_dir={out}",
            "--trainer.limit_predict_batches=2",
        ]
    )
    written = sorted(out.glob("*_overlay.png"))
    # Two prediction batches of the config's size (whole images, one by default).
    assert len(written) == 2 * data_args.get("predict_batch_size", 1)
    for overlay in written:
        stem = overlay.name.removesuffix("_overlay.png")
        written = Image.open(out / f"{stem}.png")
        # Instance maps are 16-bit grey; tissue class maps palette PNGs of 8-bit codes.
        assert written.mode == ("P" if tissue else "I;16")


def run_prototype_stage(config: Path, tmp_path: Path) -> None:
    """The prototype stage's two predict passes, tiny: 3 clusters of the patches of 2 images
    (a random encoder), names for two of them, the dictionary, pseudo masks of 2 images."""
    encoder = save_encoder_checkpoint(TimmBackbone("resnet18"), tmp_path / "encoder.ckpt")
    tiny = [
        f"--config={config}",
        f"--model.init_args.embedder.init_args.weights={encoder}",
        "--model.init_args.clusters=3",
        "--model.init_args.exemplars=2",
        "--trainer.limit_predict_batches=2",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'run'}",
        f"--trainer.callbacks.init_args.dirpath={tmp_path / 'run' / 'checkpoints'}",
    ]
    gallery = tmp_path / "gallery"
    main(["predict", *tiny, f"--output_dir={gallery}"])
    assert (gallery / "gallery.html").is_file()
    names = tmp_path / "names.json"
    names.write_text('{"names": {"0": "stroma", "1": "tumor"}}')
    dictionary = tmp_path / "dictionary.npz"
    run_command(
        "dictionary",
        [
            "--clusters",
            str(gallery / "clusters.npz"),
            "--names",
            str(names),
            "--output",
            str(dictionary),
        ],
    )
    out = tmp_path / "pseudo_masks"
    main(["predict", *tiny, f"--model.init_args.dictionary={dictionary}", f"--output_dir={out}"])
    written = sorted(out.glob("*_overlay.png"))
    assert len(written) == 2
    for overlay in written:
        codes = np.array(Image.open(out / overlay.name.replace("_overlay", "")))
        assert set(np.unique(codes).tolist()) <= {0, 1, 255}
