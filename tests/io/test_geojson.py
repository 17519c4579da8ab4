"""GeoJSON export: one closed ring per instance that rasterises back onto the instance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage.draw import disk, polygon

from protoseg.io.geojson import instances_to_geojson, write_geojson


def twenty_disks() -> np.ndarray:
    """20 disks of radius 3-9 px on a 128 px map, several touching; ids not consecutive."""
    rng = np.random.default_rng(3)
    instances = np.zeros((128, 128), np.int32)
    for k in range(20):
        center = tuple(rng.integers(10, 118, size=2))
        instances[disk(center, rng.integers(3, 10), shape=instances.shape)] = 7 * k + 5
    return instances


def ring_mask(ring: list[list[float]], shape: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """Rasterises a ring given in QuPath coordinates (pixel centres at +0.5) with skimage."""
    xy = np.asarray(ring) / scale - 0.5
    mask = np.zeros(shape, bool)
    mask[polygon(xy[:, 1], xy[:, 0], shape)] = True
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_round_trip_every_instance_once() -> None:
    instances = twenty_disks()
    ids = set(np.unique(instances[instances > 0]).tolist())
    collection = instances_to_geojson(instances)
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    found = [f["properties"]["instance_id"] for f in features]
    assert sorted(found) == sorted(ids), "every instance exactly once"
    scores = []
    for feature in features:
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        (ring,) = feature["geometry"]["coordinates"]
        assert len(ring) >= 4 and ring[0] == ring[-1]
        instance = instances == feature["properties"]["instance_id"]
        scores.append(iou(ring_mask(ring, instances.shape), instance))
    assert min(scores) > 0.8, scores
    assert np.mean(scores) > 0.95


def test_properties_for_qupath() -> None:
    instances = np.zeros((16, 16), np.int32)
    instances[3:9, 4:10] = 2
    (feature,) = instances_to_geojson(instances, class_name="Tumor", color=(1, 2, 3))["features"]
    assert feature["properties"] == {
        "objectType": "detection",
        "classification": {"name": "Tumor", "color": [1, 2, 3]},
        "instance_id": 2,
    }
    (ring,) = feature["geometry"]["coordinates"]
    xy = np.asarray(ring)
    # The outline follows the outer pixel edges: x in [4, 10], y in [3, 9].
    assert xy[:, 0].min() == 4 and xy[:, 0].max() == 10
    assert xy[:, 1].min() == 3 and xy[:, 1].max() == 9
    area = 0.5 * np.sum(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1])
    assert area > 0, "counter-clockwise with y up (RFC 7946)"


def test_offset_and_scale_place_a_tile_in_the_slide() -> None:
    instances = twenty_disks()
    plain = instances_to_geojson(instances)["features"]
    placed = instances_to_geojson(instances, offset_xy=(1000.0, 50.0), scale=4.0)["features"]
    for a, b in zip(plain, placed, strict=True):
        ring_a = np.asarray(a["geometry"]["coordinates"][0])
        ring_b = np.asarray(b["geometry"]["coordinates"][0])
        np.testing.assert_allclose(ring_b, ring_a * 4.0 + [1000.0, 50.0], atol=1e-2)


def test_tiny_holed_and_split_objects() -> None:
    instances = np.zeros((20, 20), np.int32)
    instances[0, 0] = 1  # one pixel at the corner
    instances[5:12, 5:12] = 2
    instances[7:10, 7:10] = 0  # a hole: the ring is the outer outline
    instances[15:19, 2:6] = 3
    instances[18, 18] = 3  # a stray pixel of object 3: its largest piece is kept
    features = {
        f["properties"]["instance_id"]: f for f in instances_to_geojson(instances)["features"]
    }
    assert sorted(features) == [1, 2, 3]
    for instance_id, feature in features.items():
        (ring,) = feature["geometry"]["coordinates"]
        assert len(ring) >= 4 and ring[0] == ring[-1], instance_id
    filled = instances == 2
    filled[7:10, 7:10] = True
    assert iou(ring_mask(features[2]["geometry"]["coordinates"][0], (20, 20)), filled) > 0.9
    piece = ring_mask(features[3]["geometry"]["coordinates"][0], (20, 20))
    assert piece[16, 3] and not piece[18, 18]
    assert ring_mask(features[1]["geometry"]["coordinates"][0], (20, 20))[0, 0]


def test_huge_sparse_ids_without_background() -> None:
    instances = np.full((8, 8), 10**9, np.int64)
    instances[2:5, 2:5] = 5
    found = sorted(
        f["properties"]["instance_id"] for f in instances_to_geojson(instances)["features"]
    )
    assert found == [5, 10**9]


def test_empty_map_and_bad_input() -> None:
    assert instances_to_geojson(np.zeros((8, 8), np.uint16))["features"] == []
    with pytest.raises(ValueError, match="integer instance map"):
        instances_to_geojson(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match=">= 0"):
        instances_to_geojson(-np.ones((8, 8), np.int32))


def test_write_geojson_is_json_and_atomic(tmp_path: Path) -> None:
    collection = instances_to_geojson(twenty_disks())
    path = tmp_path / "out" / "slide.geojson"
    write_geojson(path, collection)
    assert json.loads(path.read_text()) == collection
    assert [p.name for p in path.parent.iterdir()] == ["slide.geojson"]


def test_a_thousand_nuclei_each_once() -> None:
    """A MoNuSeg-sized map (speed is measured by benchmarks, not asserted here)."""
    instances = np.zeros((1000, 1000), np.int32)
    for k in range(1000):
        row, col = divmod(k, 32)
        instances[disk((16 + 31 * row, 16 + 31 * col), 8, shape=instances.shape)] = k + 1
    features = instances_to_geojson(instances)["features"]
    assert sorted(f["properties"]["instance_id"] for f in features) == list(range(1, 1001))
