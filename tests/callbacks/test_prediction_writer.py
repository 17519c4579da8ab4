"""The prediction writer's three files per image, and that they stay whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.draw import disk

from protoseg.callbacks.prediction_writer import InstancePredictionWriter


def test_writes_instance_map_overlay_and_geojson(tmp_path: Path) -> None:
    instances = np.zeros((40, 50), np.int32)
    instances[disk((10, 10), 5, shape=instances.shape)] = 1
    instances[disk((25, 35), 6, shape=instances.shape)] = 300
    image_path = tmp_path / "in.png"
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(image_path)

    writer = InstancePredictionWriter(tmp_path / "out")
    writer.write("slide_a", instances, str(image_path))

    written = np.array(Image.open(tmp_path / "out" / "slide_a.png"))
    assert written.dtype == np.uint16 and written.shape == (40, 50)
    np.testing.assert_array_equal(written, instances)
    overlay = np.array(Image.open(tmp_path / "out" / "slide_a_overlay.png"))
    assert overlay.shape == (40, 50, 3) and (overlay != 200).any()
    collection = json.loads((tmp_path / "out" / "slide_a.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    assert sorted(f["properties"]["instance_id"] for f in collection["features"]) == [1, 300]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "slide_a.geojson",
        "slide_a.png",
        "slide_a_overlay.png",
    ]


def test_refuses_more_instances_than_uint16_holds(tmp_path: Path) -> None:
    instances = np.array([[0, 70000]], np.int32)
    with pytest.raises(ValueError, match="uint16"):
        InstancePredictionWriter(tmp_path).write("too_many", instances)
    assert not list(tmp_path.iterdir()), "nothing half-written"


def test_maps_predicted_at_another_resolution_are_written_at_the_input_size(
    tmp_path: Path,
) -> None:
    # A datamodule with image_mpp hands the model the 40 x 50 input at twice its size.
    image_path = tmp_path / "in.png"
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(image_path)
    coarse = np.zeros((40, 50), np.int32)
    coarse[disk((20, 20), 8, shape=coarse.shape)] = 7
    fine = np.repeat(np.repeat(coarse, 2, 0), 2, 1)
    binary = fine > 0
    writer = InstancePredictionWriter(tmp_path / "out")
    writer.write("tile", fine, str(image_path), binary)
    written = np.array(Image.open(tmp_path / "out" / "tile.png"))
    np.testing.assert_array_equal(written, coarse)
    mask = np.array(Image.open(tmp_path / "out" / "binary" / "tile.png"))
    np.testing.assert_array_equal(mask, np.where(coarse > 0, 255, 0))
    assert np.array(Image.open(tmp_path / "out" / "tile_overlay.png")).shape == (40, 50, 3)

    with pytest.raises(ValueError, match=r"tile: predicted map \(80, 60\) is not the input"):
        writer.write("tile", np.zeros((80, 60), np.int32), str(image_path))
