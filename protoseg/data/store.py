"""``ImageStore``: images and instance maps read (and resampled) once, held where asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protoseg.data.records import ImageRecord, LabelFormat
from protoseg.io.aperio_xml import check_polygons_inside, rasterize_polygons, read_aperio_polygons
from protoseg.io.errors import DataError
from protoseg.io.images import image_size, read_instance_png, read_rgb
from protoseg.io.resample import resampled_shape, resize_nearest, resize_rgb, scale_points


class ImageStore:
    """Reads images and instance maps; :meth:`keep` holds chosen ones decoded in memory.

    Instance maps from XML are rasterised to the image size; PNG maps must match it. With
    ``scale`` other than 1 both are resampled by it (images with an area filter or
    bilinearly, XML polygons drawn on the finer or coarser grid, PNG maps by nearest
    neighbour; :mod:`protoseg.io.resample`), except the maps asked for ``native``: those stay
    at the image file's resolution, the one validation scores at. Kept maps are uint16 where
    the ids fit (a 1000 px MoNuSeg image: 3 MB + 2 MB). Only what :meth:`keep` loaded stays:
    one-pass test and predict reads are not held.

    Args:
        scale: factor every image and map is resized by (image µm/px over the models' µm/px).
    """

    def __init__(self, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.scale = scale
        self._images: dict[Path, np.ndarray] = {}
        # Keyed by (label file, native): a map at the models' and at the file's resolution.
        self._labels: dict[tuple[Path, bool], np.ndarray] = {}

    def __len__(self) -> int:
        """Number of images held in memory."""
        return len(self._images)

    def label_key(self, path: Path | None, native: bool) -> tuple[Path | None, bool]:
        """Where the map of label file ``path`` is kept: native maps are maps of their own
        only when this store resamples (at scale 1 both are the file's)."""
        return path, native and self.scale != 1

    def image(self, path: Path) -> np.ndarray:
        """(H, W, 3) uint8, resampled by ``scale``."""
        if path in self._images:
            return self._images[path]
        image = read_rgb(path)
        return resize_rgb(image, resampled_shape(image.shape[:2], self.scale))

    def instances(
        self, path: Path, fmt: LabelFormat, shape: tuple[int, int], native: bool = False
    ) -> np.ndarray:
        """Instance ids (uint16 or int32) for an image file of ``shape`` (H, W), resampled by
        ``scale`` as the image is, or at ``shape`` itself when ``native``."""
        key = self.label_key(path, native)
        if key in self._labels:
            return self._labels[key]
        scale = 1.0 if native else self.scale
        target = resampled_shape(shape, scale)
        if fmt == "xml":
            polygons = read_aperio_polygons(path)
            check_polygons_inside(path, polygons, shape)
            if scale != 1:
                polygons = [scale_points(vertices, scale) for vertices in polygons]
            instances = rasterize_polygons(polygons, target)
        else:
            instances = read_instance_png(path)
            if instances.shape != shape:
                raise DataError(f"{path}: label shape {instances.shape} != image shape {shape}")
            instances = resize_nearest(instances, target)
        if instances.max(initial=0) <= np.iinfo(np.uint16).max:
            instances = instances.astype(np.uint16)
        return instances

    def load(
        self, record: ImageRecord, native: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Image and, when the record is labelled, its instance map (at the image file's
        resolution when ``native``, else at the image's)."""
        image = self.image(record.image_path)
        if record.label_path is None or record.label_format is None:
            return image, None
        key = self.label_key(record.label_path, native)
        if key in self._labels:  # every training crop: no header read
            return image, self._labels[key]
        shape = image.shape[:2] if self.scale == 1 else image_size(record.image_path)
        return image, self.instances(record.label_path, record.label_format, shape, native)

    def keep(self, record: ImageRecord, native: bool = False) -> None:
        """Loads a record (checking its files) and holds its arrays in memory."""
        image, instances = self.load(record, native)
        self._images[record.image_path] = image
        if instances is not None and record.label_path is not None:
            self._labels[self.label_key(record.label_path, native)] = instances
