"""Aperio ImageScope XML annotations (MoNuSeg's official format) to polygons and instance maps.

Layout read: ``Annotations/Annotation/Regions/Region/Vertices/Vertex`` with ``X`` and ``Y``
attributes in pixels of the annotated image, one ``<Region>`` per nucleus.
"""

from __future__ import annotations

import math
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from skimage import draw

from protoseg.io.errors import DataError


def _coordinate(path: Path, region_id: str, index: int, vertex: ET.Element, axis: str) -> float:
    text = vertex.get(axis)
    where = f"{path}: Region Id={region_id}: Vertex {index}"
    if text is None:
        raise DataError(f"{where} has no {axis} attribute")
    try:
        value = float(text)
    except ValueError as err:
        raise DataError(f"{where} has non-numeric {axis}={text!r}") from err
    if not math.isfinite(value):
        raise DataError(f"{where} has non-finite {axis}={text!r}")
    return value


def read_aperio_polygons(path: str | Path) -> list[np.ndarray]:
    """Reads every ``<Region>`` of an Aperio XML file as a polygon, in document order.

    Regions with fewer than 3 vertices have no area; they are skipped with one
    :class:`UserWarning` per file naming their Ids (2 of the 13 MoNuSeg training files hold
    one such 2-vertex region each, which the shared instance PNGs omit as well). Regions of
    every ``<Annotation>`` layer are returned.

    Args:
        path: the ``.xml`` file.

    Returns:
        One (N, 2) float64 array of (x, y) vertices per kept region, N >= 3.

    Raises:
        DataError: unreadable or not well-formed XML, no ``<Region>`` at all, or a vertex with
            a missing, non-numeric or non-finite ``X``/``Y`` (the message names the Region Id).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(f"{path}: not well-formed XML ({err})") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err})") from err
    regions = list(root.iter("Region"))
    if not regions:
        raise DataError(
            f"{path}: no <Region> element (expected Annotations/Annotation/Regions/Region)"
        )
    polygons: list[np.ndarray] = []
    degenerate: list[str] = []
    for position, region in enumerate(regions):
        region_id = region.get("Id", f"#{position}")
        vertices = [
            (_coordinate(path, region_id, i, v, "X"), _coordinate(path, region_id, i, v, "Y"))
            for i, v in enumerate(region.iter("Vertex"))
        ]
        if len(vertices) < 3:
            degenerate.append(region_id)
            continue
        polygons.append(np.asarray(vertices, dtype=np.float64))
    if degenerate:
        warnings.warn(
            f"{path}: skipped {len(degenerate)} region(s) with fewer than 3 vertices "
            f"(Id={', '.join(degenerate)})",
            UserWarning,
            stacklevel=2,
        )
    return polygons


def check_polygons_inside(
    path: str | Path, polygons: Sequence[np.ndarray], shape: tuple[int, int]
) -> None:
    """Refuses an annotation with a polygon wholly outside its image (the XML of another
    image, or coordinates in another unit); polygons cut by the border are normal (81 of
    the 4,949 of MoNuSeg's training XMLs) and kept.

    Args:
        path: the XML file, for the message.
        polygons: (N, 2) (x, y) vertices in the image's pixels.
        shape: (H, W) of the image file.

    Raises:
        DataError: naming the file, the polygon and the image's size.
    """
    height, width = shape
    for index, vertices in enumerate(polygons):
        xs, ys = vertices[:, 0], vertices[:, 1]
        if xs.max() < 0 or ys.max() < 0 or xs.min() > width - 1 or ys.min() > height - 1:
            raise DataError(
                f"{path}: polygon {index + 1} of {len(polygons)} (x {xs.min():.0f} to "
                f"{xs.max():.0f}, y {ys.min():.0f} to {ys.max():.0f}) lies wholly outside its "
                f"{width} x {height} px image; is it the annotation of another image?"
            )


def _outline_pixels(
    rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of the closed polygon outline, clipped to ``shape``.

    Like ``skimage.draw.polygon_perimeter(rows, cols, shape)`` (rounded vertices joined by
    8-connected lines; ties on exact half-pixel steps may round differently), which needs
    matplotlib; this one is vectorised numpy, fast for MoNuSeg's densely sampled outlines
    (hundreds of vertices per nucleus).
    """
    r0 = np.rint(rows).astype(np.int64)
    c0 = np.rint(cols).astype(np.int64)
    r1, c1 = np.roll(r0, -1), np.roll(c0, -1)
    steps = np.maximum(np.abs(r1 - r0), np.abs(c1 - c0))
    counts = steps + 1
    edge = np.repeat(np.arange(len(r0)), counts)
    position = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    fraction = position / np.maximum(steps[edge], 1)
    rr = np.rint(r0[edge] + fraction * (r1 - r0)[edge]).astype(np.int64)
    cc = np.rint(c0[edge] + fraction * (c1 - c0)[edge]).astype(np.int64)
    inside = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
    return rr[inside], cc[inside]


def rasterize_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Draws filled polygons, outline included, as an instance map.

    Vertices are in pixel-index coordinates (pixel ``(r, c)`` is centred on ``x = c, y = r``),
    as in :mod:`skimage.draw`. Parts outside the image are clipped.

    Args:
        polygons: (N, 2) arrays of (x, y) vertices, e.g. from :func:`read_aperio_polygons`.
        shape: (H, W) of the output.

    Returns:
        (H, W) int32 map with id ``k + 1`` for ``polygons[k]``; where polygons overlap, the
        later one wins, so an id may be missing if a later polygon covers it entirely.
    """
    height, width = int(shape[0]), int(shape[1])
    instances = np.zeros((height, width), dtype=np.int32)
    for instance_id, vertices in enumerate(polygons, start=1):
        vertices = np.asarray(vertices, dtype=np.float64)
        if vertices.ndim != 2 or vertices.shape[1] != 2 or len(vertices) == 0:
            raise ValueError(f"polygon {instance_id - 1}: expected (N, 2), not {vertices.shape}")
        cols, rows = vertices[:, 0], vertices[:, 1]
        rr, cc = draw.polygon(rows, cols, shape=(height, width))
        instances[rr, cc] = instance_id
        rr, cc = _outline_pixels(rows, cols, (height, width))
        instances[rr, cc] = instance_id
    return instances
