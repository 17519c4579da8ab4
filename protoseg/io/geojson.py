"""Instance maps to GeoJSON polygons that QuPath imports as detections."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import find_contours

from protoseg.io.images import write_text_atomic


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed (M, 2) ring; positive when counter-clockwise with y up."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """Removes vertices in the middle of straight runs; the outline does not move at all."""
    points = ring[:-1]
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    turns = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] != 0
    if turns.sum() < 3:
        return ring
    points = points[turns]
    return np.vstack([points, points[:1]])


def _outer_ring(mask: np.ndarray) -> np.ndarray:
    """Closed outer contour (M, 2) in (row, col) of the crop, M >= 4, first == last.

    Marching squares on the zero-padded crop always yields closed curves that run half way
    between object and background pixel centres, never through a pixel, and never touch
    themselves; ``fully_connected="high"`` joins diagonal neighbours, as 8-connectivity does.
    Of several pieces (an instance split in two, or a hole) the one enclosing the largest
    area is the outer ring of the largest piece.
    """
    contours = find_contours(np.pad(mask, 1).astype(np.float32), 0.5, fully_connected="high")
    ring = max(contours, key=lambda c: abs(_signed_area(c)))
    if np.any(ring[0] != ring[-1]):
        ring = np.vstack([ring, ring[:1]])
    return _drop_collinear(ring) - 1.0  # undo the padding


def instances_to_geojson(
    instances: np.ndarray,
    *,
    offset_xy: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    class_name: str = "Nucleus",
    color: tuple[int, int, int] = (255, 0, 0),
) -> dict[str, Any]:
    """One GeoJSON Polygon feature per instance, as QuPath's "Import objects" reads them.

    Coordinates follow QuPath: continuous (x, y) image coordinates where pixel (row r,
    col c) covers ``[c, c + 1) x [r, r + 1)``; the outline of a nucleus runs along the outer
    edges of its border pixels, cutting corners diagonally. So a map pixel index
    ``(r, c)`` becomes ``x = (c + 0.5) * scale + offset_x``; to rasterise the rings back with
    :mod:`skimage.draw` (pixel centres at integers), use ``x / scale - 0.5`` after removing the
    offset. Each ring is the outer boundary of the instance (holes are filled; an instance in
    several pieces keeps its largest piece), counter-clockwise with y up (RFC 7946), with
    the vertices inside straight runs dropped (lossless simplification).

    Args:
        instances: (H, W) integer map, 0 = background; ids need not be consecutive.
        offset_xy: position of the map's top-left corner in full-image (slide) pixels.
        scale: full-image pixels per map pixel (4.0 for a map made at 1/4 resolution).
        class_name: QuPath classification of every object.
        color: RGB colour QuPath shows for the classification.

    Returns:
        A ``FeatureCollection`` dict; each feature's properties are ``objectType``
        ("detection"), ``classification`` ({"name", "color"}) and ``instance_id``.
    """
    instances = np.asarray(instances)
    if instances.ndim != 2 or not np.issubdtype(instances.dtype, np.integer):
        raise ValueError(
            f"expected an (H, W) integer instance map, got {instances.dtype} {instances.shape}"
        )
    if instances.min(initial=0) < 0:
        raise ValueError("instance ids must be >= 0")
    ids = None
    if instances.max(initial=0) > instances.size:
        # Sparse huge ids would make find_objects' list huge: number them 1..N first.
        ids = np.union1d([0], instances)
        instances = np.searchsorted(ids, instances)
    offset = np.asarray(offset_xy, dtype=np.float64)
    features = []
    for index, box in enumerate(ndi.find_objects(instances), start=1):
        if box is None:
            continue
        ring = _outer_ring(instances[box] == index)
        rows = ring[:, 0] + box[0].start
        cols = ring[:, 1] + box[1].start
        xy = np.stack([(cols + 0.5) * scale, (rows + 0.5) * scale], axis=1) + offset
        if _signed_area(xy) < 0:
            xy = xy[::-1]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [np.round(xy, 3).tolist()]},
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": class_name, "color": [int(v) for v in color]},
                    "instance_id": int(index if ids is None else ids[index]),
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | Path, collection: dict[str, Any]) -> None:
    """Writes a GeoJSON dict atomically (temporary file + rename), creating parent folders."""
    write_text_atomic(path, json.dumps(collection, separators=(",", ":")))
