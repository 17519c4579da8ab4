"""Every kind of bad input a user may give protoseg, and what it must do with each (issue 34).

For each case, run in this process through ``protoseg.cli.main``: exit status 2, exactly one
line on stderr (``protoseg: error: ...``) naming the offending file or option, no traceback,
and nothing on disk changed: every file byte-identical (inputs and earlier runs' outputs),
no file or folder added (no partial output, no empty ``tensorboard/version_N`` of a failed
start). Two cases also run through the ``protoseg`` console script.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import (
    _aperio_xml_text,
    disk_polygons,
    synthetic_he,
    synthetic_instances,
    write_pyramid,
)
from PIL import Image

from protoseg.cli import main
from protoseg.io.outputs import MANIFEST, read_manifest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@dataclass(frozen=True)
class World:
    """Inputs shared by the cases (never changed by any of them)."""

    dir: Path
    root: Path  # 3 images of 64 px, instance PNGs and Aperio XML
    run: Path  # a finished fit of the tiny quick-start model
    ckpt: Path  # its last.ckpt
    slide: Path  # a 3-level pyramid TIFF with tissue

    @property
    def data(self) -> Path:
        return self.root.parent


def write_root(root: Path, xml: bool = True, labels: bool = True, seed: int = 0) -> Path:
    """A MoNuSeg-layout root of three 64 px PNG images (labels/, annotations_xml/)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    if labels:
        (root / "labels").mkdir()
    if xml:
        (root / "annotations_xml").mkdir()
    for index in range(3):
        instances = synthetic_instances(64, 6, rng)
        Image.fromarray(synthetic_he(instances, rng)).save(root / "images" / f"img{index}.png")
        if labels:
            Image.fromarray(instances.astype(np.uint16)).save(root / "labels" / f"img{index}.png")
        if xml:
            text = _aperio_xml_text(disk_polygons(instances))
            (root / "annotations_xml" / f"img{index}.xml").write_text(text)
    return root


def tiny(root: Path, run: Path, config: Path = CONFIGS / "quickstart/segment.yaml") -> list[str]:
    """A stage config shrunk to seconds (test_resnet U-Net, 32 px crops) writing into ``run``;
    the quick-start head trains on the root's labels here (no pseudo masks)."""
    return [
        f"--config={config}",
        f"--data.root={root}",
        "--data.pseudo_mask_dir=null",
        "--data.crop_size=32",
        "--data.crops_per_epoch=4",
        "--data.batch_size=2",
        "--data.num_workers=0",
        "--model.net.encoder=test_resnet",
        "--model.net.decoder_channels=[16,16,8,8,8]",
        "--model.tile_size=64",
        "--model.tile_overlap=16",
        f"--trainer.default_root_dir={run}",
        f"--trainer.logger.init_args.save_dir={run}",
        f"--trainer.callbacks.init_args.dirpath={run / 'checkpoints'}",
        "--trainer.enable_progress_bar=false",
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=0",
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    folder = tmp_path_factory.mktemp("world")
    root = write_root(folder / "data" / "root")
    run = folder / "run"
    main(["fit", *tiny(root, run)])
    image = np.full((256, 256, 3), (235, 200, 220), np.uint8)
    image[64:192, 64:192] = (95, 60, 140)
    (folder / "slides").mkdir()
    slide = write_pyramid(folder / "slides" / "slide.tif", image, mpp=0.5, levels=2)
    return World(folder, root, run, run / "checkpoints" / "last.ckpt", slide)


def copy_root(world: World, tmp: Path) -> Path:
    return Path(shutil.copytree(world.root, tmp / "root"))


def garbage_file(tmp: Path, name: str = "garbage.ckpt") -> Path:
    path = tmp / name
    path.write_bytes(bytes(range(256)) * 8)
    return path


def truncated_checkpoint(world: World, tmp: Path) -> Path:
    data = world.ckpt.read_bytes()
    path = tmp / "cut.ckpt"
    path.write_bytes(data[: len(data) // 2])
    return path


def stage_checkpoint(tmp: Path, class_path: str, name: str) -> Path:
    """A Lightning checkpoint of another stage, as the CLI writes one."""
    path = tmp / name
    state = {
        "epoch": 0,
        "global_step": 200,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": {"backbone.model.conv1.weight": torch.zeros(8, 3, 3, 3)},
        "hyper_parameters": {"_class_path": class_path},
    }
    torch.save(state, path)
    return path


def corrupt_tile_slide(world: World, tmp: Path) -> Path:
    """The world's slide with one level-0 tile's compressed bytes zeroed."""
    path = Path(shutil.copy(world.slide, tmp / "corrupt.tif"))
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        offset, count = page.dataoffsets[5], page.databytecounts[5]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = bytes(count)
    path.write_bytes(bytes(data))
    return path


# --- the cases: (world, a fresh folder) -> (argv, text the error line must contain) ---------

Case = Callable[[World, Path], tuple[list[str], str]]
CASES: dict[str, Case] = {}


def case(function: Case) -> Case:
    """Adds a case to the matrix under its name."""
    CASES[function.__name__.removeprefix("_")] = function
    return function


def fit(world: World, tmp: Path, *extra: str, root: Path | None = None) -> list[str]:
    return ["fit", *tiny(root or world.root, tmp / "run"), *extra]


def evaluate(
    command: str, world: World, tmp: Path, *extra: str, root: Path | None = None
) -> list[str]:
    return [command, *tiny(root or world.root, tmp / "run"), f"--ckpt_path={world.ckpt}", *extra]


def predict(world: World, tmp: Path, *extra: str, root: Path | None = None) -> list[str]:
    return evaluate("predict", world, tmp, *extra, root=root)


def slides(world: World, tmp: Path, *paths: Path) -> list[str]:
    listed = ",".join(str(p) for p in paths)
    return predict(
        world,
        tmp,
        f"--data={CONFIGS / 'wsi/predict.yaml'}",
        f"--data.slides=[{listed}]",
        "--data.mpp=0.5",  # the slide's level 0, where corrupt_tile_slide breaks a tile
        "--data.tile_size=64",
        "--data.overlap=16",
        "--data.num_workers=0",
        "--data.thumbnail_size=128",
        f"--output_dir={tmp / 'out'}",
    )


@case
def _missing_root(w: World, t: Path) -> tuple[list[str], str]:
    return fit(w, t, root=t / "nowhere"), f"{t / 'nowhere' / 'images'}: images folder does not"


@case
def _empty_images(w: World, t: Path) -> tuple[list[str], str]:
    (t / "empty" / "images").mkdir(parents=True)
    return fit(w, t, root=t / "empty"), "images: no images"


@case
def _truncated_image(w: World, t: Path) -> tuple[list[str], str]:
    root = copy_root(w, t)
    path = root / "images" / "img1.png"
    path.write_bytes(path.read_bytes()[:300])
    return fit(w, t, root=root), f"{path}: cannot read image"


@case
def _text_as_image(w: World, t: Path) -> tuple[list[str], str]:
    root = copy_root(w, t)
    (root / "images" / "img2.png").write_text("not a picture")
    return fit(w, t, root=root), f"{root / 'images' / 'img2.png'}: cannot read image"


@case
def _label_size(w: World, t: Path) -> tuple[list[str], str]:
    root = copy_root(w, t)
    shutil.rmtree(root / "annotations_xml")
    path = root / "labels" / "img1.png"
    Image.fromarray(np.zeros((32, 32), np.uint16)).save(path)
    return fit(w, t, root=root), f"{path}: label shape (32, 32) != image shape (64, 64)"


@case
def _colour_label(w: World, t: Path) -> tuple[list[str], str]:
    root = copy_root(w, t)
    shutil.rmtree(root / "annotations_xml")
    path = root / "labels" / "img1.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    return fit(w, t, root=root), f"{path}: label image has mode 'RGB'"


@case
def _malformed_xml(w: World, t: Path) -> tuple[list[str], str]:
    root = copy_root(w, t)
    path = root / "annotations_xml" / "img1.xml"
    path.write_text("<Annotations><Regions><Region>")
    return fit(w, t, root=root), f"{path}: not well-formed XML"


@case
def _xml_vertex(w: World, t: Path) -> tuple[list[str], str]:
    root = copy_root(w, t)
    path = root / "annotations_xml" / "img1.xml"
    text = path.read_text()
    start = text.index('X="') + 3
    path.write_text(text[:start] + "abc" + text[text.index('"', start) :])
    return fit(w, t, root=root), f"{path}: Region Id=1: Vertex 0 has non-numeric X='abc'"


@case
def _xml_outside(w: World, t: Path) -> tuple[list[str], str]:
    root = copy_root(w, t)
    path = root / "annotations_xml" / "img1.xml"
    path.write_text(_aperio_xml_text([np.array([[5000.0, 10], [5010, 10], [5005, 20]])]))
    return fit(w, t, root=root), f"{path}: polygon 1 of 1 (x 5000 to 5010"


@case
def _annotation_without_image(w: World, t: Path) -> tuple[list[str], str]:
    root = copy_root(w, t)
    path = root / "annotations_xml" / "stray.xml"
    shutil.copy(root / "annotations_xml" / "img0.xml", path)
    return fit(w, t, root=root), f"{path}: annotation without image"


@case
def _image_without_annotation(w: World, t: Path) -> tuple[list[str], str]:
    root = copy_root(w, t)
    (root / "annotations_xml" / "img2.xml").unlink()
    (root / "labels" / "img2.png").unlink()
    return fit(w, t, root=root), f"{root / 'images' / 'img2.png'}: no annotation"


@case
def _duplicate_stem(w: World, t: Path) -> tuple[list[str], str]:
    root = copy_root(w, t)
    Image.open(root / "images" / "img0.png").save(root / "images" / "img0.tif")
    return fit(w, t, root=root), "img0.tif: same stem as"


@case
def _missing_pseudo_folder(w: World, t: Path) -> tuple[list[str], str]:
    args = fit(w, t, f"--data.pseudo_mask_dir={t / 'masks'}")
    return args, f"{t / 'masks'}: pseudo-mask folder does not exist"


@case
def _missing_pseudo_mask(w: World, t: Path) -> tuple[list[str], str]:
    (t / "masks").mkdir()
    return fit(w, t, f"--data.pseudo_mask_dir={t / 'masks'}"), ": pseudo mask missing"


@case
def _crop_too_large(w: World, t: Path) -> tuple[list[str], str]:
    return fit(w, t, "--data.crop_size=128"), "smaller than --data.crop_size 128"


@case
def _pixel_limit(w: World, t: Path) -> tuple[list[str], str]:
    os.environ["PROTOSEG_MAX_IMAGE_PIXELS"] = "1000"  # the test moves it into monkeypatch
    return fit(w, t), "PROTOSEG_MAX_IMAGE_PIXELS"


@case
def _unlabelled_stem_clash(w: World, t: Path) -> tuple[list[str], str]:
    (t / "more").mkdir()
    shutil.copy(w.root / "images" / "img0.png", t / "more" / "img0.png")
    args = fit(w, t, f"--data.unlabelled_dirs=[{t / 'more'}]")
    return args, f"{t / 'more' / 'img0.png'}: same stem as an image of the root"


@case
def _split_leaves_nothing(w: World, t: Path) -> tuple[list[str], str]:
    return fit(w, t, "--data.val_fraction=0.9"), f"{w.root}: val_fraction=0.9 leaves no training"


@case
def _batch_size_zero(w: World, t: Path) -> tuple[list[str], str]:
    return fit(w, t, "--data.batch_size=0"), "--data.batch_size: batch_size must be >= 1, got 0"


@case
def _val_fraction_one(w: World, t: Path) -> tuple[list[str], str]:
    return fit(w, t, "--data.val_fraction=1.0"), "--data.val_fraction: val_fraction must be"


@case
def _misspelt_data_option(w: World, t: Path) -> tuple[list[str], str]:
    return fit(w, t, "--data.batch_sise=2"), "--data.batch_sise: MoNuSegDataModule has no option"


@case
def _misspelt_trainer_option(w: World, t: Path) -> tuple[list[str], str]:
    return fit(w, t, "--trainer.max_stepz=2"), "(did you mean --trainer.max_steps?)"


@case
def _bad_value_type(w: World, t: Path) -> tuple[list[str], str]:
    return fit(w, t, "--data.batch_size=two"), "--data.batch_size: Expected a int"


@case
def _unknown_config_key(w: World, t: Path) -> tuple[list[str], str]:
    path = t / "extra.yaml"
    path.write_text("model:\n  init_args:\n    min_arae: 3\n")
    return fit(w, t, f"--config={path}"), "--model.min_arae: SegmentationModule has no option"


@case
def _yaml_syntax(w: World, t: Path) -> tuple[list[str], str]:
    path = t / "broken.yaml"
    path.write_text("trainer:\n  max_steps: 3\n  callbacks: [1, 2\n")
    return fit(w, t, f"--config={path}"), f"{path}: YAML syntax error, line 4"


@case
def _missing_config(w: World, t: Path) -> tuple[list[str], str]:
    return fit(w, t, f"--config={t / 'none.yaml'}"), f"{t / 'none.yaml'}: config file does not"


@case
def _unknown_subcommand(w: World, t: Path) -> tuple[list[str], str]:
    return ["fitt", *tiny(w.root, t / "run")], "fitt: unknown subcommand"


@case
def _refit_used_folder(w: World, t: Path) -> tuple[list[str], str]:
    args = ["fit", *tiny(w.root, w.run)]
    return args, f"{w.run / 'checkpoints'}: holds last.ckpt of an earlier run; add --ckpt_path last"


@case
def _run_folder_in_data(w: World, t: Path) -> tuple[list[str], str]:
    args = ["fit", *tiny(w.root, w.root / "images" / "run")]
    return args, "lies inside"


@case
def _garbage_encoder_weights(w: World, t: Path) -> tuple[list[str], str]:
    path = garbage_file(t, "encoder.pt")
    args = fit(w, t, f"--model.net.encoder_weights={path}")
    return args, f"{path}: backbone weights is not a PyTorch checkpoint file"


@case
def _text_ckpt(w: World, t: Path) -> tuple[list[str], str]:
    path = t / "notes.ckpt"
    path.write_text("epoch 3 looked good\n")
    return evaluate("validate", w, t, f"--ckpt_path={path}"), f"{path}: checkpoint is not a"


@case
def _truncated_ckpt(w: World, t: Path) -> tuple[list[str], str]:
    path = truncated_checkpoint(w, t)
    args = evaluate("validate", w, t, f"--ckpt_path={path}")
    return args, f"{path}: checkpoint is cut short or corrupt"


@case
def _missing_ckpt(w: World, t: Path) -> tuple[list[str], str]:
    path = t / "nope.ckpt"
    return evaluate("test", w, t, f"--ckpt_path={path}"), f"{path}: checkpoint file does not"


@case
def _other_stage_ckpt(w: World, t: Path) -> tuple[list[str], str]:
    path = stage_checkpoint(t, "protoseg.lightning_modules.simclr.SimCLRModule", "simclr.ckpt")
    args = evaluate("validate", w, t, f"--ckpt_path={path}")
    return args, f"{path}: holds a SimCLRModule checkpoint (step 200)"


@case
def _encoder_as_ckpt(w: World, t: Path) -> tuple[list[str], str]:
    path = t / "encoder.ckpt"
    torch.save({"backbone": "resnet18", "state_dict": {"conv1.weight": torch.zeros(1)}}, path)
    args = evaluate("predict", w, t, f"--ckpt_path={path}")
    return args, f"{path}: holds an encoder export (resnet18 encoder weights)"


@case
def _python_object_ckpt(w: World, t: Path) -> tuple[list[str], str]:
    path = t / "pickled.ckpt"
    torch.save({"state_dict": {}, "extra": Path("x")}, path)
    args = evaluate("validate", w, t, f"--ckpt_path={path}")
    return args, f"{path}: checkpoint holds a Python object (pathlib"


@case
def _weights_do_not_fit(w: World, t: Path) -> tuple[list[str], str]:
    args = evaluate("validate", w, t, "--model.net.decoder_channels=[16,16,8,8,4]")
    return args, f"{w.ckpt}: its weights do not fit the config's SegmentationModule"


@case
def _no_ckpt(w: World, t: Path) -> tuple[list[str], str]:
    args = ["validate", *tiny(w.root, t / "run")]
    return args, "--ckpt_path: validate needs trained weights"


@case
def _validate_without_labels(w: World, t: Path) -> tuple[list[str], str]:
    root = write_root(t / "plain", xml=False, labels=False)
    return evaluate("validate", w, t, root=root), f"{root}: no labelled images to validate"


@case
def _test_without_labels(w: World, t: Path) -> tuple[list[str], str]:
    root = write_root(t / "plain", xml=False, labels=False)
    return evaluate("test", w, t, root=root), f"{root}: no labelled images to test"


@case
def _output_is_images(w: World, t: Path) -> tuple[list[str], str]:
    out = w.root / "images"
    return predict(w, t, f"--output_dir={out}"), f"{out}: --output_dir lies inside {w.root}"


@case
def _output_contains_data(w: World, t: Path) -> tuple[list[str], str]:
    return predict(w, t, f"--output_dir={w.data}"), f"{w.data}: --output_dir contains {w.root}"


@case
def _output_is_file(w: World, t: Path) -> tuple[list[str], str]:
    path = t / "out.png"
    path.write_bytes(b"x")
    return predict(w, t, f"--output_dir={path}"), f"{path}: --output_dir is a file"


@case
def _output_under_file(w: World, t: Path) -> tuple[list[str], str]:
    (t / "file").write_text("x")
    out = t / "file" / "out"
    return predict(w, t, f"--output_dir={out}"), f"{out}: --output_dir is not writable"


@case
def _output_of_strangers(w: World, t: Path) -> tuple[list[str], str]:
    (t / "out").mkdir()
    (t / "out" / "notes.txt").write_text("mine")
    args = predict(w, t, f"--output_dir={t / 'out'}")
    return args, f"{t / 'out'}: output folder holds files protoseg did not write (notes.txt)"


@case
def _unreadable_among_images(w: World, t: Path) -> tuple[list[str], str]:
    root = copy_root(w, t)
    (root / "images" / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    args = predict(w, t, f"--output_dir={t / 'out'}", root=root)
    return args, f"{root / 'images' / 'img2.png'}: cannot read image"


@case
def _pseudo_masks_over_inputs(w: World, t: Path) -> tuple[list[str], str]:
    masks = t / "masks"
    masks.mkdir()
    for image in (w.root / "images").iterdir():
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(masks / image.name)
    args = predict(w, t, f"--data.pseudo_mask_dir={masks}", f"--output_dir={masks}")
    return args, f"{masks}: --output_dir is {masks}, which this command reads"


@case
def _score_missing_predictions(w: World, t: Path) -> tuple[list[str], str]:
    args = ["score", "--predictions", str(t / "nope"), "--root", str(w.root)]
    return args, f"{t / 'nope'}: predictions folder does not exist"


@case
def _score_wrong_size(w: World, t: Path) -> tuple[list[str], str]:
    (t / "pred").mkdir()
    for index in range(3):
        Image.fromarray(np.zeros((32, 32), np.uint16)).save(t / "pred" / f"img{index}.png")
    args = ["score", "--predictions", str(t / "pred"), "--root", str(w.root)]
    return args, f"{t / 'pred' / 'img0.png'}: prediction (32, 32) != image (64, 64)"


@case
def _score_output_not_json(w: World, t: Path) -> tuple[list[str], str]:
    args = ["score", "--predictions", str(t), "--root", str(w.root), "--output", str(t / "s.png")]
    return args, f"{t / 's.png'}: --output is a .json file to write"


@case
def _score_missing_option(w: World, t: Path) -> tuple[list[str], str]:
    return ["score", "--root", str(w.root)], "required: --predictions"


@case
def _missing_slide(w: World, t: Path) -> tuple[list[str], str]:
    return slides(w, t, t / "none.svs"), f"{t / 'none.svs'}: slide file or folder does not exist"


@case
def _not_a_slide(w: World, t: Path) -> tuple[list[str], str]:
    path = t / "fake.svs"
    path.write_text("not a slide")
    return slides(w, t, path), f"{path}: not a whole-slide format OpenSlide reads"


@case
def _corrupt_tile(w: World, t: Path) -> tuple[list[str], str]:
    path = corrupt_tile_slide(w, t)
    return slides(w, t, path), f"{path}: cannot read the tile at level-0 x="


@case
def _detector_of_another_stage(w: World, t: Path) -> tuple[list[str], str]:
    """The PSM head's chained input: its centre detector's checkpoint."""
    config = CONFIGS / "psm" / "segment_monuseg.yaml"
    masks = t / "masks"
    masks.mkdir()
    for image in (w.root / "images").iterdir():
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(masks / image.name)
    args = [
        "fit",
        *tiny(w.root, t / "run", config),
        f"--data.pseudo_mask_dir={masks}",
        f"--model.postprocess.detector={w.ckpt}",  # the head's own checkpoint, not a detector's
    ]
    return args, f"{w.ckpt}: holds a SegmentationModule checkpoint (step 1)"


@case
def _no_gpu(w: World, t: Path) -> tuple[list[str], str]:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    return fit(w, t, "--trainer.accelerator=gpu"), "--trainer: No supported gpu backend found"


CHAIN = CONFIGS / "chains" / "quickstart.yaml"


@case
def _chain_run_dir_in_data(w: World, t: Path) -> tuple[list[str], str]:
    run_dir = w.root / "images" / "run"
    args = ["chain", str(CHAIN), "--run_dir", str(run_dir), f"--data.root={w.root}"]
    return args, f"{run_dir}: chain run folder (--run_dir) lies inside {w.root}"


@case
def _chain_run_dir_of_strangers(w: World, t: Path) -> tuple[list[str], str]:
    """Without --resume a chain empties its run folder: never one it did not make."""
    (t / "results").mkdir()
    (t / "results" / "table.csv").write_text("mine\n")
    args = ["chain", str(CHAIN), "--run_dir", str(t / "results"), f"--data.root={w.root}"]
    return args, f"{t / 'results'}: chain run folder (--run_dir) holds files of something else"


@case
def _chain_reads_a_missing_artifact(w: World, t: Path) -> tuple[list[str], str]:
    """A chained stage whose input (a stage's checkpoint) no earlier step writes."""
    chain = t / "chain.yaml"
    chain.write_text(
        "artifacts: {stage: missing_stage}\n"
        "steps:\n"
        "  - name: head predictions\n"
        "    command: predict\n"
        f"    args: [--config={CONFIGS / 'quickstart/segment.yaml'}, "
        '"--ckpt_path={stage}/checkpoints/last.ckpt"]\n'
    )
    args = ["chain", str(chain), "--run_dir", str(t / "chain_run"), f"--data.root={w.root}"]
    return args, "step 'head predictions' reads artifact 'stage', which no earlier step writes"


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file and folder under ``folders``: a file's SHA-256, a folder's "dir"."""
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            found[str(path)] = digest
    return found


def test_the_matrix_has_at_least_30_kinds_of_bad_input() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_named_line_and_changes_nothing(
    name: str,
    world: World,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROTOSEG_TRACEBACK", raising=False)
    monkeypatch.delenv("PROTOSEG_MAX_IMAGE_PIXELS", raising=False)
    args, named = CASES[name](world, tmp_path)
    if "PROTOSEG_MAX_IMAGE_PIXELS" in os.environ:  # set by the case: undone after the test
        monkeypatch.setenv("PROTOSEG_MAX_IMAGE_PIXELS", os.environ.pop("PROTOSEG_MAX_IMAGE_PIXELS"))
    before = snapshot(world.dir, tmp_path)
    capfd.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(args)
    err = capfd.readouterr().err
    assert stopped.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("protoseg: error: ") and named in lines[0], lines[0]
    assert "Traceback" not in err
    assert snapshot(world.dir, tmp_path) == before, "a failed command changed files"


def console_script() -> Path:
    return Path(sys.executable).with_name("protoseg")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (
            ["fit", "--config=configs/quickstart/segment.yaml", "--trainer.max_stepz=2"],
            "max_steps?",
        ),
        (["score", "--predictions", "nowhere", "--root", "samples/monuseg_crops"], "nowhere"),
    ],
    ids=["unknown-option", "score-missing-folder"],
)
def test_console_script_prints_one_line_and_exits_2(args: list[str], named: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROTOSEG_TRACEBACK"}
    done = subprocess.run(
        [str(console_script()), *args], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("protoseg: error: ") and named in done.stderr


# --- asked to, predict goes on past unreadable inputs ----------------------------------------


def test_predict_skips_unreadable_images_when_asked(
    world: World, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    root = copy_root(world, tmp_path)
    broken = root / "images" / "img1.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    main(predict(world, tmp_path, f"--output_dir={out}", "--data.skip_unreadable=true", root=root))
    err = capfd.readouterr().err
    assert f"protoseg: skipped {broken}: cannot read image" in err
    assert f"1 input(s) skipped, listed in {out / MANIFEST}" in err
    manifest = read_manifest(out)
    assert [entry["path"] for entry in manifest["skipped"]] == [str(broken)]
    assert manifest["written"] == [
        f"img{i}{suffix}" for i in (0, 2) for suffix in (".geojson", ".png", "_overlay.png")
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted([*manifest["written"], MANIFEST])
    # The folder is protoseg's now: a second run may write into it.
    main(predict(world, tmp_path, f"--output_dir={out}", "--data.skip_unreadable=true", root=root))


def test_slide_predict_skips_an_unreadable_tile_when_asked(
    world: World, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    slide = corrupt_tile_slide(world, tmp_path)
    main([*slides(world, tmp_path, slide), "--data.skip_unreadable=true"])
    err = capfd.readouterr().err
    assert f"protoseg: skipped {slide}: cannot read the tile at level-0 x=" in err
    out = tmp_path / "out"
    manifest = read_manifest(out)
    assert manifest["written"] == ["corrupt.geojson", "corrupt_mask.png", "corrupt_overlay.png"]
    assert len(manifest["skipped"]) >= 1
