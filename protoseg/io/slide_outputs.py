"""Whole-slide outputs built piece by piece: a streamed GeoJSON file and a preview mask.

Both keep memory bounded whatever the slide's size: features go to disk as they come, and
the preview is a label map of at most ``max_side`` px on its longer side.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np


class GeoJSONStream:
    """A GeoJSON FeatureCollection written feature by feature, renamed into place at the end.

    The features go to a hidden temporary file beside ``path``; :meth:`commit` closes the
    collection and renames it (atomic within one file system), :meth:`abort` deletes it, so
    ``path`` is never a partial file. The text is the one
    :func:`~protoseg.io.geojson.write_geojson` writes for the same features.

    Args:
        path: destination ``.geojson`` file; its folder is created if needed.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:12]}.tmp"
        self._handle = open(self.temporary, "x", encoding="utf-8")  # noqa: SIM115 (kept open)
        self._handle.write('{"type":"FeatureCollection","features":[')
        self.count = 0

    def write(self, features: list[dict[str, Any]]) -> None:
        """Appends features (GeoJSON ``Feature`` dicts)."""
        for feature in features:
            if self.count:
                self._handle.write(",")
            self._handle.write(json.dumps(feature, separators=(",", ":")))
            self.count += 1

    def commit(self) -> Path:
        """Closes the collection and renames the file to ``path``."""
        self._handle.write("]}")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.temporary, self.path)
        return self.path

    def abort(self) -> None:
        """Deletes the temporary file; ``path`` keeps whatever it held before."""
        self._handle.close()
        self.temporary.unlink(missing_ok=True)


class PreviewCanvas:
    """A downsampled instance map of a whole slide, painted tile by tile.

    Each preview pixel takes the instance id found at its centre in the pasted tile (point
    sampling: nuclei smaller than a preview pixel may not show; the GeoJSON has them all).

    Args:
        dimensions: the slide's level-0 ``(width, height)``.
        max_side: the preview's longer side, px (at most the slide's).

    Attributes:
        scale: level-0 px per preview px (>= 1).
        labels: (h, w) int32 instance ids, 0 = background.
    """

    def __init__(self, dimensions: tuple[int, int], max_side: int = 2048) -> None:
        if max_side < 1:
            raise ValueError(f"max_side must be >= 1, got {max_side}")
        width, height = dimensions
        self.scale = max(1.0, max(width, height) / max_side)
        shape = (max(1, math.ceil(height / self.scale)), max(1, math.ceil(width / self.scale)))
        self.labels = np.zeros(shape, np.int32)

    def _samples(
        self, start: int, length: int, downsample: float, size: int
    ) -> tuple[int, int, np.ndarray]:
        """Preview range [first, last) whose pixel centres fall in a tile's span, and the
        tile px each samples."""
        first = max(0, math.ceil(start / self.scale - 0.5))
        last = min(size, math.ceil((start + length * downsample) / self.scale - 0.5))
        centres = (np.arange(first, max(first, last)) + 0.5) * self.scale
        pixels = np.clip(np.floor((centres - start) / downsample).astype(np.int64), 0, length - 1)
        return first, max(first, last), pixels

    def paste(self, instances: np.ndarray, origin_xy: tuple[int, int], downsample: float) -> None:
        """Paints a tile's nonzero ids over the preview.

        Args:
            instances: (H, W) integer ids of one tile, 0 = nothing to paint.
            origin_xy: level-0 ``(x, y)`` of the tile's top-left corner.
            downsample: level-0 px per tile px.
        """
        height, width = self.labels.shape
        x0, x1, cols = self._samples(origin_xy[0], instances.shape[1], downsample, width)
        y0, y1, rows = self._samples(origin_xy[1], instances.shape[0], downsample, height)
        if x0 == x1 or y0 == y1:
            return
        sampled = instances[np.ix_(rows, cols)]
        region = self.labels[y0:y1, x0:x1]
        region[sampled > 0] = sampled[sampled > 0]
