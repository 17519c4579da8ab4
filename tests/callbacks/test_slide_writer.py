"""Whole-slide stitching: ownership by core, seam-free GeoJSON, previews, atomic output, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import tifffile
from conftest import write_pyramid
from PIL import Image
from scipy import ndimage as ndi
from skimage.draw import disk

from protoseg.callbacks.slide_writer import SlidePredictionWriter, owned_instances
from protoseg.cli import main
from protoseg.datamodules.slide_predict import WSIPredictDataModule
from protoseg.io.geojson import instances_to_geojson
from protoseg.io.slide_outputs import PreviewCanvas
from protoseg.lightning_modules.evaluation import (
    IMAGENET_NORMALIZATION,
    batch_rgb,
    prediction_items,
)

ROOT = Path(__file__).resolve().parents[2]
PINK, PURPLE = (230, 150, 190), (95, 60, 140)
SIZE = 768  # level-0 px at 0.25 µm/px; predicted at 0.5 µm/px (level 1, 384 px)


def label_dark(rgb: np.ndarray) -> np.ndarray:
    """Nuclei: 8-connected pixels darker than the stroma in green. (H, W, 3) -> (H, W) int32."""
    return ndi.label(rgb[..., 1] < 100, structure=np.ones((3, 3)))[0].astype(np.int32)


class ThresholdModule(L.LightningModule):
    """Deterministic stand-in for a segmentation stage: thresholds each tile into instances,
    and raises at batch ``fail_at`` (to test atomic output)."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.fail_at = fail_at

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        if batch_idx == self.fail_at:
            raise RuntimeError("model failed mid-slide")
        rgbs = batch_rgb(batch, IMAGENET_NORMALIZATION)
        return prediction_items(batch, [label_dark(rgb) for rgb in rgbs])


# Level-1 centres (row, col) on a tile grid of 64 px tiles, 24 px overlap (stride 40): tile
# edges at 40, 64, 80, 104, core boundaries at 52, 92; the first crosses tile 0's right edge.
BORDER_NUCLEI = [(100, 64), (100, 40), (150, 52), (52, 150), (92, 92), (64, 64), (200, 104)]


@pytest.fixture(scope="module")
def nuclei_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """768 px at 0.25 µm/px, 3 levels: tissue with nuclei (radius 10 level-0 px) on tile
    borders and core boundaries, and random ones; a white glass strip on the right."""
    image = np.full((SIZE, SIZE, 3), 255, np.uint8)
    image[:, : SIZE - 96] = PINK
    rng = np.random.default_rng(0)
    centres = [(2 * r, 2 * c) for r, c in BORDER_NUCLEI]
    while len(centres) < len(BORDER_NUCLEI) + 25:  # apart: touching nuclei would merge
        centre = rng.integers(20, SIZE - 120, size=2)
        if np.hypot(*(np.asarray(centres) - centre).T).min() > 30:
            centres.append(tuple(centre))
    for centre in centres:
        image[disk(centre, 10, shape=image.shape[:2])] = PURPLE
    return write_pyramid(tmp_path_factory.mktemp("slides") / "nuclei.tif", image, mpp=0.25)


def predict(
    slides: list[Path], out: Path, fail_at: int | None = None, **data: Any
) -> SlidePredictionWriter:
    options = dict(mpp=0.5, tile_size=64, overlap=24, batch_size=4, num_workers=0)
    module = WSIPredictDataModule([str(s) for s in slides], **{**options, **data})
    writer = SlidePredictionWriter(out, preview_size=200)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, callbacks=[writer], enable_progress_bar=False
    )
    trainer.predict(ThresholdModule(fail_at), datamodule=module, return_predictions=False)
    return writer


def rings(collection: dict[str, Any]) -> list[tuple[tuple[float, float], ...]]:
    return sorted(
        tuple(map(tuple, f["geometry"]["coordinates"][0])) for f in collection["features"]
    )


def test_owned_instances_match_a_naive_centroid_loop() -> None:
    rng = np.random.default_rng(3)
    instances = ndi.label(rng.random((40, 40)) > 0.8)[0]
    origin, downsample, core = (100, 50), 2.0, (130.0, 60.0, 160.0, np.inf)
    expected = []
    for index in range(1, instances.max() + 1):
        rows, cols = np.nonzero(instances == index)
        x = origin[0] + (cols.mean() + 0.5) * downsample
        y = origin[1] + (rows.mean() + 0.5) * downsample
        if core[0] <= x < core[2] and core[1] <= y < core[3]:
            expected.append(index)
    assert 0 < len(expected) < instances.max()
    assert owned_instances(instances, origin, downsample, core).tolist() == expected


def test_preview_paste_samples_pixel_centres() -> None:
    canvas = PreviewCanvas((100, 80), max_side=50)
    assert canvas.scale == 2.0 and canvas.labels.shape == (40, 50)
    canvas.paste(np.full((10, 10), 7), (20, 30), 1.0)
    expected = np.zeros((40, 50), np.int32)
    expected[15:20, 10:15] = 7
    assert np.array_equal(canvas.labels, expected)


def test_stitched_slide_equals_the_whole_image_at_once(nuclei_slide: Path, tmp_path: Path) -> None:
    writer = predict([nuclei_slide], tmp_path / "out")
    assert writer.written == [tmp_path / "out" / "nuclei.geojson"]
    collection = json.loads(writer.written[0].read_text())
    # Reference: the same thresholding on the whole level-1 image, in level-0 coordinates.
    level1 = tifffile.imread(nuclei_slide, key=1)
    reference = instances_to_geojson(label_dark(level1), scale=2.0)
    assert len(collection["features"]) == len(reference["features"]) >= 25
    assert rings(collection) == rings(reference)
    ids = [f["properties"]["instance_id"] for f in collection["features"]]
    assert sorted(ids) == list(range(1, len(ids) + 1))
    # The nucleus crossing tile 0's right edge comes out once, whole (area of the disk).
    (row, col) = BORDER_NUCLEI[0]
    hits = []
    for feature in collection["features"]:
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        if (
            ring[:, 0].min() < 2 * col < ring[:, 0].max()
            and ring[:, 1].min() < 2 * row < ring[:, 1].max()
        ):
            hits.append(ring)
    assert len(hits) == 1
    x, y = hits[0][:, 0], hits[0][:, 1]
    area = 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
    assert area == pytest.approx(np.pi * 10**2, rel=0.15)


def test_geojson_and_previews_are_valid(nuclei_slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    predict([nuclei_slide], out)
    collection = json.loads((out / "nuclei.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    for feature in collection["features"]:
        assert feature["type"] == "Feature"
        assert feature["properties"]["objectType"] == "detection"
        assert feature["properties"]["classification"]["name"] == "Nucleus"
        assert feature["geometry"]["type"] == "Polygon"
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        assert len(ring) >= 4 and (ring[0] == ring[-1]).all()
        assert (ring >= 0).all() and (ring <= SIZE).all()  # level-0 px
    mask = np.asarray(Image.open(out / "nuclei_mask.png"))
    overlay = np.asarray(Image.open(out / "nuclei_overlay.png"))
    assert mask.shape == (200, 200) and set(np.unique(mask)) == {0, 255}
    assert overlay.shape == (200, 200, 3)
    assert 0.005 < (mask > 0).mean() < 0.1
    assert sorted(p.name for p in out.iterdir()) == [
        "nuclei.geojson",
        "nuclei_mask.png",
        "nuclei_overlay.png",
    ]


def test_blank_slide_gets_empty_outputs(nuclei_slide: Path, tmp_path: Path) -> None:
    blank = write_pyramid(tmp_path / "blank.tif", np.full((256, 256, 3), 255, np.uint8), 0.25)
    out = tmp_path / "out"
    writer = predict([blank, nuclei_slide], out)
    assert [p.name for p in writer.written] == ["blank.geojson", "nuclei.geojson"]
    assert json.loads((out / "blank.geojson").read_text()) == {
        "type": "FeatureCollection",
        "features": [],
    }
    assert not np.asarray(Image.open(out / "blank_mask.png")).any()


def test_no_partial_file_after_an_exception(nuclei_slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "nuclei.geojson").write_text("previous run")
    with pytest.raises(RuntimeError, match="mid-slide"):
        predict([nuclei_slide], out, fail_at=2)
    assert [p.name for p in out.iterdir()] == ["nuclei.geojson"]
    assert (out / "nuclei.geojson").read_text() == "previous run"


def test_real_svs_to_geojson(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip(f"real slide {path} is absent")
    out = tmp_path / "out"
    predict([path], out, mpp=2.0, tile_size=128, overlap=32, thumbnail_size=512)
    collection = json.loads((out / "CMU-1-Small-Region.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) > 50
    coords = np.concatenate([f["geometry"]["coordinates"][0] for f in collection["features"]])
    assert (coords >= 0).all() and (coords <= [2220, 2967]).all()
    assert np.asarray(Image.open(out / "CMU-1-Small-Region_mask.png")).shape == (200, 150)


def test_cli_predicts_a_slide_with_the_shipped_config(nuclei_slide: Path, tmp_path: Path) -> None:
    """``protoseg predict --data configs/wsi/predict.yaml`` swaps in the slide datamodule
    and its writer (random weights: this checks the plumbing, not the nuclei)."""
    out = tmp_path / "out"
    main(
        [
            "predict",
            f"--config={ROOT / 'configs/monuseg/segment.yaml'}",
            "--model.net.decoder_channels=[16,16,8,8,8]",
            f"--trainer.default_root_dir={tmp_path}",
            # the config's TensorBoard logger kept: the slide datamodule's tile_size must not
            # clash with the head's when Lightning logs both's hyperparameters
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            f"--data={ROOT / 'configs/wsi/predict.yaml'}",
            f"--data.slides=[{nuclei_slide}]",
            "--data.mpp=1.0",
            "--data.tile_size=128",
            "--data.num_workers=0",
            f"--output_dir={out}",
            "--allow_random_weights=true",
        ]
    )
    assert json.loads((out / "nuclei.geojson").read_text())["type"] == "FeatureCollection"
    assert (out / "nuclei_mask.png").is_file() and (out / "nuclei_overlay.png").is_file()
