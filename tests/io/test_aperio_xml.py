"""Aperio XML polygons: parsing, errors naming the file and Region, rasterisation, real data."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from protoseg.io.aperio_xml import rasterize_polygons, read_aperio_polygons
from protoseg.io.errors import DataError
from protoseg.io.images import read_instance_png

SQUARE = np.array([[2.0, 2.0], [6.0, 2.0], [6.0, 5.0], [2.0, 5.0]])
TRIANGLE = np.array([[10.0, 10.0], [14.5, 10.0], [10.0, 14.5]])


def write(tmp_path: Path, text: str, name: str = "a.xml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


XmlText = Callable[[list[np.ndarray]], str]


def test_reads_regions_in_order(tmp_path: Path, aperio_xml_text: XmlText) -> None:
    polygons = read_aperio_polygons(write(tmp_path, aperio_xml_text([SQUARE, TRIANGLE])))
    assert len(polygons) == 2
    assert all(p.dtype == np.float64 and p.shape[1] == 2 for p in polygons)
    np.testing.assert_allclose(polygons[0], SQUARE)
    np.testing.assert_allclose(polygons[1], TRIANGLE)


def test_skips_degenerate_regions_with_a_warning(tmp_path: Path, aperio_xml_text: XmlText) -> None:
    text = aperio_xml_text([SQUARE, SQUARE[:2], TRIANGLE])
    with pytest.warns(UserWarning, match=r"a\.xml: skipped 1 region.*Id=2"):
        polygons = read_aperio_polygons(write(tmp_path, text))
    assert len(polygons) == 2


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<Annotations><Annotation><Regions><Region Id='1'>", "not well-formed XML"),
        ("<Annotations><Annotation><Regions/></Annotation></Annotations>", "no <Region>"),
        (
            "<Annotations><Region Id='7'><Vertices><Vertex X='1' Y='2'/><Vertex X='3'/>"
            "<Vertex X='1' Y='5'/></Vertices></Region></Annotations>",
            "Region Id=7: Vertex 1 has no Y attribute",
        ),
        (
            "<Annotations><Region Id='9'><Vertices><Vertex X='1,5' Y='2'/></Vertices>"
            "</Region></Annotations>",
            "Region Id=9: Vertex 0 has non-numeric X='1,5'",
        ),
        (
            "<Annotations><Region Id='4'><Vertices><Vertex X='nan' Y='2'/></Vertices>"
            "</Region></Annotations>",
            "Region Id=4: Vertex 0 has non-finite X",
        ),
    ],
    ids=["not-well-formed", "no-region", "vertex-without-y", "non-numeric", "non-finite"],
)
def test_bad_files_name_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text, "bad.xml")
    with pytest.raises(DataError) as error:
        read_aperio_polygons(path)
    assert str(error.value).startswith(f"{path}: ")
    assert problem in str(error.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothing.xml: cannot read file"):
        read_aperio_polygons(tmp_path / "nothing.xml")


def test_rasterize_fills_polygon_and_its_outline() -> None:
    instances = rasterize_polygons([SQUARE], (8, 8))
    expected = np.zeros((8, 8), np.int32)
    expected[2:6, 2:7] = 1  # rows y=2..5, columns x=2..6, both edges included
    np.testing.assert_array_equal(instances, expected)
    assert instances.dtype == np.int32


def test_rasterize_order_overlap_and_clipping() -> None:
    big = np.array([[-5.0, -5.0], [9.0, -5.0], [9.0, 9.0], [-5.0, 9.0]])  # beyond the image
    instances = rasterize_polygons([big, SQUARE, TRIANGLE], (12, 12))
    assert instances.shape == (12, 12)
    assert instances[0, 0] == 1 and instances[9, 9] == 1, "clipped, not shifted"
    assert instances[3, 3] == 2, "later regions overwrite earlier ones"
    assert instances[11, 11] == 3 and instances[10, 10] == 3 and instances[11, 0] == 0
    assert set(np.unique(instances)) == {0, 1, 2, 3}
    assert rasterize_polygons([], (3, 4)).shape == (3, 4)


def test_real_xml_parses_and_matches_the_png_labels(monuseg_train: Path) -> None:
    stem = "TCGA-21-5784-01Z-00-DX1"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # this file has no degenerate region
        polygons = read_aperio_polygons(monuseg_train / "annotations_xml" / f"{stem}.xml")
    assert len(polygons) == 398
    assert min(len(p) for p in polygons) >= 3
    labels = read_instance_png(monuseg_train / "labels" / f"{stem}.png")
    instances = rasterize_polygons(polygons, labels.shape)
    assert instances.max() == 398 and len(np.unique(instances)) == 399
    a, b = labels > 0, instances > 0
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice > 0.85, f"pixel Dice PNG vs XML {dice:.3f} (data README: about 0.92)"


def test_real_xml_with_a_degenerate_region(monuseg_train: Path) -> None:
    path = monuseg_train / "annotations_xml" / "TCGA-50-5931-01Z-00-DX1.xml"
    with pytest.warns(UserWarning, match="skipped 1 region.*Id=180"):
        polygons = read_aperio_polygons(path)
    assert len(polygons) == 444  # 445 regions; the shared PNG has 444 nuclei too
