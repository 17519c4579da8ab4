"""The prototype stage end to end on tiny fixtures: cluster, name (simulated pathologist),
dictionary, dense query into pseudo masks; on image folders and on a whole slide."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from conftest import TISSUE_COLOURS, tissue_codes, tissue_picture, write_pyramid
from PIL import Image

from protoseg.cli import build_cli, main
from protoseg.commands import run_command
from protoseg.io.class_maps import TissueClasses
from protoseg.io.prototype_files import (
    Clusters,
    PrototypeDictionary,
    load_clusters,
    load_dictionary,
    save_dictionary,
)
from protoseg.modules.backbones import TimmBackbone, save_encoder_checkpoint
from protoseg.modules.prototypes import DenseEmbedder

CLASSES = ["--data.class_names=[tumor,stroma,normal]", "--data.background_code=3"]


def model_args(encoder: Path) -> list[str]:
    return [
        "--model=protoseg.lightning_modules.prototypes.PrototypeModule",
        "--model.embedder=protoseg.modules.prototypes.DenseEmbedder",
        f"--model.embedder.weights={encoder}",
        "--model.embedder.window=16",
        "--model.clusters=6",
        "--model.exemplars=3",
        "--model.patch_step=8",
        "--model.threshold=0.0",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
    ]


class StageRun(NamedTuple):
    clusters: Clusters
    gallery: Path
    dictionary: Path
    maps: Path


def cluster_name_query(
    tmp_path: Path, encoder: Path, data: list[str], names: dict[str, str] | Callable[[Path], Path]
) -> StageRun:
    """The stage's two passes with the naming between: clusters and gallery, names (a naming
    file's ``names``, or a function that names ``clusters.npz`` into a file it returns),
    ``protoseg dictionary``, and the dictionary's maps of the data's predict images."""
    gallery = tmp_path / "gallery"
    main(["predict", *model_args(encoder), *data, f"--output_dir={gallery}"])
    if callable(names):
        names_file = names(gallery / "clusters.npz")
    else:
        names_file = tmp_path / "names.json"
        names_file.write_text(json.dumps({"names": names}))
    dictionary = tmp_path / "dictionary.npz"
    argv = ["--clusters", str(gallery / "clusters.npz"), "--names", str(names_file)]
    assert run_command("dictionary", [*argv, "--output", str(dictionary)]) == 0
    maps = tmp_path / "maps"
    main(
        [
            "predict",
            *model_args(encoder),
            *data,
            f"--model.dictionary={dictionary}",
            f"--output_dir={maps}",
        ]
    )
    return StageRun(load_clusters(gallery / "clusters.npz"), gallery, dictionary, maps)


def truth_of(image_path: Path) -> np.ndarray:
    """The class codes a synthetic picture was painted from (its nearest colour)."""
    colours = np.array([*TISSUE_COLOURS[:3], (250, 250, 250)], float)
    image = np.asarray(Image.open(image_path).convert("RGB")).astype(float)
    return np.abs(image[:, :, None] - colours).sum(-1).argmin(-1)


@pytest.fixture
def encoder(tmp_path: Path) -> Path:
    return save_encoder_checkpoint(TimmBackbone("resnet18"), tmp_path / "encoder.ckpt")


def test_cluster_name_query_on_an_image_folder(
    tmp_path: Path, make_wsss_root: Callable[..., Path], encoder: Path
) -> None:
    root = make_wsss_root(tmp_path / "luad", n_train=4, n_val=3, size=64)
    data = [
        "--data=protoseg.datamodules.wsss.WSSSDataModule",
        f"--data.root={root}",
        *CLASSES,
        "--data.num_workers=0",
    ]

    def simulated_pathologist(clusters: Path) -> Path:
        names = tmp_path / "names.json"
        argv = ["--clusters", str(clusters), "--root", str(root / "val"), "--images"]
        argv += ["00", "01", "02", "--output", str(names), "--exemplars", "3", "--purity", "0.6"]
        assert run_command("name-clusters", argv) == 0
        return names

    stage = cluster_name_query(tmp_path, encoder, data, simulated_pathologist)
    assert stage.clusters.centroids.shape == (6, 512) and stage.clusters.sizes.sum() == 4 * 8 * 8
    assert all(len(group) == 3 for group in stage.clusters.exemplars)
    dictionary, pseudo = stage.dictionary, stage.maps
    assert len(load_dictionary(dictionary).names) >= 2
    hits = total = 0
    for image in sorted((root / "training").glob("*.png")):
        codes = np.array(Image.open(pseudo / image.name))
        assert codes.shape == (64, 64) and set(np.unique(codes)) <= {0, 1, 2, 3, 255}
        sure = codes != 255
        hits += int((codes[sure] == truth_of(image)[sure]).sum())
        total += int(sure.sum())
    # Distinct colours: a random encoder's patches already separate them where it is sure.
    assert total > 0.5 * 4 * 64 * 64 and hits / total > 0.8
    scores = tmp_path / "scores.json"
    # The pseudo masks of the validation images, scored against their masks.
    main(
        [
            "predict",
            *model_args(encoder),
            *data[:-1],
            "--data.num_workers=0",
            f"--data.predict_dir={root / 'val'}",
            f"--model.dictionary={dictionary}",
            f"--output_dir={tmp_path / 'val_pseudo'}",
        ]
    )
    assert (
        run_command(
            "score-tissue",
            [
                "--predictions",
                str(tmp_path / "val_pseudo"),
                "--root",
                str(root / "val"),
                "--output",
                str(scores),
            ],
        )
        == 0
    )
    assert '"miou"' in scores.read_text()
    # protoseg validate scores the same maps, images named in val_exclude left out: its
    # figures equal score-tissue's of the folder on the other images.
    run_command(
        "score-tissue",
        [
            "--predictions",
            str(tmp_path / "val_pseudo"),
            "--root",
            str(root / "val"),
            "--images",
            "01",
            "02",
            "--output",
            str(scores),
        ],
    )
    expected = json.loads(scores.read_text())
    cli = build_cli(
        [
            "validate",
            *model_args(encoder),
            *data,
            f"--model.dictionary={dictionary}",
            '--data.val_exclude=["00"]',
        ]
    )
    measured = cli.trainer.callback_metrics
    for key in ("miou", "fwiou", "iou_tumor", "iou_stroma"):
        want = expected[key]
        got = float(measured[f"val/{key}"])
        assert (np.isnan(got) and want is None) or got == pytest.approx(want, abs=1e-4), key


def test_a_whole_slide(tmp_path: Path, encoder: Path) -> None:
    """A generated pyramid of tissue bands: its tiles' patches cluster into a gallery with
    slide thumbnails, and the dictionary's query writes one class map for the slide."""
    rng = np.random.default_rng(0)
    codes = np.kron(tissue_codes(8, [0, 1, 2], 3, rng), np.ones((32, 32), np.uint8))
    slide = write_pyramid(tmp_path / "slide.tif", tissue_picture(codes, rng), mpp=1.0, levels=2)
    data = [
        "--data=protoseg.datamodules.wsss_slides.TissueSlideDataModule",
        f"--data.slides=[{slide}]",
        *CLASSES,
        "--data.mpp=1.0",
        "--data.tile_size=96",
        "--data.overlap=16",
        "--data.num_workers=0",
        "--data.min_tissue=null",
    ]
    names = {"0": "tumor", "1": "stroma", "2": "normal"}
    stage = cluster_name_query(tmp_path, encoder, data, names)
    assert all(s["slide"] for group in stage.clusters.exemplars for s in group)
    assert (stage.gallery / "gallery.html").stat().st_size > 1000
    out = stage.maps
    written = np.array(Image.open(out / "slide.png"))
    assert written.shape == (256, 256)
    assert set(np.unique(written)) <= {0, 1, 2, 255} and (written != 255).mean() > 0.3
    assert Image.open(out / "slide_overlay.png").size == (256, 256)


@pytest.mark.slow
def test_the_shared_svs(tmp_path: Path, encoder: Path, shared_data: Path) -> None:
    """The real Aperio slide through OpenSlide: its tissue tiles' patches cluster into a
    gallery of slide regions; the dictionary's query writes the slide's class map."""
    svs = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    if not svs.is_file():
        pytest.skip(f"{svs} is absent")
    data = [
        "--data=protoseg.datamodules.wsss_slides.TissueSlideDataModule",
        f"--data.slides=[{svs}]",
        *CLASSES,
        "--data.mpp=2.0",
        "--data.tile_size=256",
        "--data.overlap=32",
        "--data.num_workers=0",
    ]
    names = {"0": "tumor", "1": "stroma", "2": "normal", "3": "background"}
    stage = cluster_name_query(tmp_path, encoder, data, names)
    assert all(s["slide"] and s["path"] == str(svs) for g in stage.clusters.exemplars for s in g)
    out = stage.maps
    written = np.array(Image.open(out / "CMU-1-Small-Region.png"))
    # The map covers the slide's level 0 (2220 x 2967 px), under the writer's 4096 px cap.
    assert written.shape == (2967, 2220)
    assert (written != 255).mean() > 0.3


def test_a_dictionary_of_other_classes_is_refused(
    tmp_path: Path,
    make_wsss_root: Callable[..., Path],
    encoder: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = make_wsss_root(tmp_path / "bcss", "bcss", n_train=1, n_val=1, n_test=0)
    embedder = DenseEmbedder(weights=str(encoder), window=16)
    luad = TissueClasses(("tumor", "stroma", "normal"), background_code=3)
    prototypes = np.eye(2, 512, dtype=np.float32)
    dictionary = save_dictionary(
        tmp_path / "dictionary.npz",
        PrototypeDictionary(
            prototypes, np.array([0, 1]), ["tumor", "stroma"], embedder.settings, luad
        ),
    )
    with pytest.raises(SystemExit) as stopped:
        main(
            [
                "validate",
                "--model=protoseg.lightning_modules.prototypes.PrototypeModule",
                f"--model.dictionary={dictionary}",
                "--data=protoseg.datamodules.wsss.WSSSDataModule",
                f"--data.root={root}",
                "--data.class_names=[TUM,STR,LYM,NEC]",
                "--data.background_code=4",
                "--data.num_workers=0",
                "--trainer.logger=false",
            ]
        )
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"protoseg: error: {dictionary}: made for classes 0 tumor, 1 stroma")
