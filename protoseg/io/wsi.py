"""Whole-slide images through OpenSlide: opening, resolution, tissue masks and tile grids.

Coordinates are level-0 pixels ``(x, y)`` of the slide's top-left corner, as OpenSlide's
``read_region`` takes them; sizes at a target resolution are given in µm/px (``mpp``).
Nothing here reads the full-resolution slide: tiles come from the pyramid level closest
to the target resolution and masks from a thumbnail.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import openslide
from PIL import Image
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

from protoseg.io.errors import DataError

# Level downsamples are ratios of rounded sizes (Aperio: 4.000345 for a 4x level); a level
# this much coarser than asked still counts, at a negligible upsampling.
_LEVEL_TOLERANCE = 0.01
_MICRONS_PER_UNIT = {"centimeter": 1e4, "inch": 25400.0}
# Scanners write 0.1-10 µm/px; a coarser TIFF resolution is a default DPI (72 dpi = 353 µm).
_MAX_PLAUSIBLE_MPP = 50.0
# Saturation (0-255) below which a thumbnail pixel is glass even when Otsu splits noise.
_MIN_SATURATION = 20
# Brighter than this in every channel: empty glass, whatever its saturation.
_NEAR_WHITE = 220
# Specks and holes smaller than this share of the thumbnail are dust and tears, not tissue.
_MIN_AREA_FRACTION = 1e-4


def slide_name(slide: openslide.AbstractSlide) -> str:
    """The slide's file path (``repr`` for slides not opened from a file), for messages."""
    return str(getattr(slide, "_filename", None) or repr(slide))


def open_slide(path: str | Path) -> openslide.OpenSlide:
    """Opens a whole-slide file (Aperio, Hamamatsu, MIRAX, generic tiled TIFF, ...).

    Raises:
        DataError: the file is missing or OpenSlide cannot read it.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: slide file does not exist")
    if not path.is_file():
        raise DataError(f"{path}: not a file (a slide is one file, e.g. .svs or .mrxs)")
    try:
        return openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError as err:
        raise DataError(f"{path}: not a whole-slide format OpenSlide reads ({err})") from err
    except (openslide.OpenSlideError, OSError) as err:
        raise DataError(f"{path}: cannot read slide ({type(err).__name__}: {err})") from err


def _positive_float(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _tiff_mpp(properties: Mapping[str, str]) -> float | None:
    unit = properties.get("tiff.ResolutionUnit", "").lower()
    resolutions = [_positive_float(properties.get(f"tiff.{a}Resolution")) for a in "XY"]
    found = [r for r in resolutions if r is not None]
    if unit not in _MICRONS_PER_UNIT or not found:
        return None
    mpp = _MICRONS_PER_UNIT[unit] / float(np.mean(found))
    return mpp if mpp <= _MAX_PLAUSIBLE_MPP else None


def slide_mpp(slide: openslide.AbstractSlide, default: float | None = None) -> float:
    """Microns per pixel at level 0.

    Read from ``openslide.mpp-x`` / ``openslide.mpp-y`` (their mean when both exist), else
    from ``tiff.XResolution`` / ``tiff.YResolution`` in ``tiff.ResolutionUnit`` (centimeter
    or inch), else ``default``.

    Raises:
        DataError: the slide states no resolution and ``default`` is None.
    """
    properties = slide.properties
    found = [_positive_float(properties.get(f"openslide.mpp-{axis}")) for axis in "xy"]
    mpps = [m for m in found if m is not None]
    if mpps:
        return float(np.mean(mpps))
    mpp = _tiff_mpp(properties)
    if mpp is not None:
        return mpp
    if default is not None:
        return float(default)
    raise DataError(
        f"{slide_name(slide)}: slide states no resolution (no openslide.mpp-x or TIFF "
        "resolution); pass its microns per pixel (e.g. default_mpp=0.25 for 40x, 0.5 for 20x)"
    )


def best_level(slide: openslide.AbstractSlide, downsample: float) -> int:
    """The level with the largest downsample <= ``downsample`` (1% tolerance), else 0.

    OpenSlide's ``get_best_level_for_downsample`` semantics: reading from that level and
    shrinking never upsamples by more than the tolerance.
    """
    downsamples = slide.level_downsamples
    fitting = [i for i, d in enumerate(downsamples) if d <= downsample * (1.0 + _LEVEL_TOLERANCE)]
    return max(fitting, key=lambda i: downsamples[i], default=0)


def _on_white(region: Image.Image) -> Image.Image:
    """RGBA -> RGB with transparent areas (outside the scanned area) white, like glass."""
    if region.mode != "RGBA":
        return region.convert("RGB")
    rgb = Image.new("RGB", region.size, (255, 255, 255))
    rgb.paste(region, mask=region.getchannel("A"))
    return rgb


def read_region_at_mpp(
    slide: openslide.AbstractSlide, x0: int, y0: int, size: int, mpp: float, base_mpp: float
) -> np.ndarray:
    """Reads a square tile at a target resolution.

    The square's top-left corner is ``(x0, y0)`` in level-0 pixels and its side is ``size``
    pixels at ``mpp`` µm/px, i.e. ``size * mpp / base_mpp`` level-0 pixels. It is read from
    :func:`best_level` (memory stays proportional to the tile) and resized with an area
    filter when shrinking, bilinear when enlarging. Areas outside the slide are white.

    Args:
        slide: an open slide.
        x0: left edge, level-0 pixels.
        y0: top edge, level-0 pixels.
        size: tile side at the target resolution, px.
        mpp: target µm/px.
        base_mpp: the slide's level-0 µm/px (:func:`slide_mpp`).

    Returns:
        (size, size, 3) uint8 RGB.

    Raises:
        DataError: OpenSlide cannot decode the tile (the slide's handle is then unusable:
            OpenSlide keeps the error; open the slide again to read other tiles).
    """
    if size < 1 or mpp <= 0 or base_mpp <= 0:
        raise ValueError(f"need size >= 1, mpp > 0, base_mpp > 0; got {size}, {mpp}, {base_mpp}")
    downsample = mpp / base_mpp
    level = best_level(slide, downsample)
    extent = size * downsample / slide.level_downsamples[level]  # side at `level`, px
    read = max(1, math.ceil(extent - 1e-6))
    try:
        region = _on_white(slide.read_region((int(x0), int(y0)), level, (read, read)))
    except openslide.OpenSlideError as err:
        # A corrupt tile (e.g. "Not a JPEG file"): OpenSlide names neither file nor place.
        raise DataError(
            f"{slide_name(slide)}: cannot read the tile at level-0 x={int(x0)}, y={int(y0)} "
            f"(level {level}): {err}"
        ) from err
    if read != size or extent != read:
        shrinking = extent > size
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
        region = region.resize((size, size), resample, box=(0.0, 0.0, extent, extent))
    return np.asarray(region, dtype=np.uint8).copy()


def tissue_mask(
    slide: openslide.AbstractSlide, thumbnail_size: int = 1024
) -> tuple[np.ndarray, float]:
    """Tissue on a thumbnail: saturated (Otsu on HSV saturation) and not near white.

    Specks and holes under 0.01% of the thumbnail are removed. The thumbnail is read from
    the level nearest its size (the whole of level 0 for a slide without a pyramid).

    Args:
        slide: an open slide.
        thumbnail_size: the longer side of the thumbnail, px.

    Returns:
        (h, w) bool mask and its downsample: level-0 px per mask px (the width ratio).
    """
    thumbnail = slide.get_thumbnail((thumbnail_size, thumbnail_size)).convert("RGB")
    rgb = np.asarray(thumbnail)
    saturation = np.asarray(thumbnail.convert("HSV"))[:, :, 1]
    # Otsu of a blank slide splits noise; the floor keeps glass out.
    threshold = _MIN_SATURATION
    if saturation.min() != saturation.max():
        threshold = max(threshold, float(threshold_otsu(saturation)))
    mask = (saturation > threshold) & ~(rgb > _NEAR_WHITE).all(axis=2)
    speck = round(_MIN_AREA_FRACTION * mask.size)
    mask = remove_small_holes(remove_small_objects(mask, max_size=speck), max_size=speck)
    return mask, slide.dimensions[0] / mask.shape[1]


def tissue_fractions(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Share of tissue in boxes of a mask, by an integral image.

    Args:
        mask: (h, w) bool.
        boxes: (N, 4) float ``(x0, y0, x1, y1)`` in mask pixels; each is widened to whole
            pixels (at least one) and clipped to the mask.

    Returns:
        (N,) float64 in [0, 1].
    """
    height, width = mask.shape
    integral = np.zeros((height + 1, width + 1), np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    x0 = np.clip(np.floor(boxes[:, 0]).astype(np.int64), 0, width - 1)
    y0 = np.clip(np.floor(boxes[:, 1]).astype(np.int64), 0, height - 1)
    x1 = np.clip(np.ceil(boxes[:, 2]).astype(np.int64), x0 + 1, width)
    y1 = np.clip(np.ceil(boxes[:, 3]).astype(np.int64), y0 + 1, height)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return inside / ((x1 - x0) * (y1 - y0))


def _grid_count(length: int, side: float, stride: float) -> int:
    """Number of tiles of ``side`` px, ``stride`` px apart, that fit in ``length`` px."""
    if length < side:
        return 0
    return math.floor((length - side) / stride + 1e-9) + 1


def tissue_tile_grid(
    slide: openslide.AbstractSlide,
    tile_size: int,
    mpp: float,
    base_mpp: float,
    overlap: int = 0,
    min_tissue: float = 0.5,
    mask: np.ndarray | None = None,
) -> list[tuple[int, int]]:
    """Top-left corners of a regular grid of tiles that lie inside the slide and on tissue.

    Tiles are ``tile_size`` px at ``mpp`` µm/px, ``tile_size - overlap`` apart, row by row;
    only tiles wholly inside the slide are listed.

    Args:
        slide: an open slide.
        tile_size: tile side at the target resolution, px.
        mpp: target µm/px.
        base_mpp: the slide's level-0 µm/px (:func:`slide_mpp`).
        overlap: px shared by neighbouring tiles at the target resolution.
        min_tissue: smallest share of a tile's mask area that is tissue (0 keeps all).
        mask: (h, w) bool tissue mask covering the slide (default: :func:`tissue_mask`);
            its downsample is the width ratio.

    Returns:
        ``(x, y)`` level-0 pixel corners.
    """
    if tile_size < 1 or not 0 <= overlap < tile_size:
        raise ValueError(f"need tile_size >= 1 and 0 <= overlap < tile_size; got {overlap}")
    if not 0.0 <= min_tissue <= 1.0:
        raise ValueError(f"min_tissue must be in [0, 1], got {min_tissue}")
    downsample = mpp / base_mpp
    side = tile_size * downsample  # level-0 px
    stride = (tile_size - overlap) * downsample
    width, height = slide.dimensions
    # Flooring keeps every tile wholly inside: x + side <= width.
    xs = np.floor(np.arange(_grid_count(width, side, stride)) * stride).astype(np.int64)
    ys = np.floor(np.arange(_grid_count(height, side, stride)) * stride).astype(np.int64)
    corners = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    if min_tissue > 0 and len(corners):
        if mask is None:
            mask, _ = tissue_mask(slide)
        scale = mask.shape[1] / width
        boxes = np.concatenate([corners, corners + side], axis=1) * scale
        corners = corners[tissue_fractions(mask, boxes) >= min_tissue]
    return [(int(x), int(y)) for x, y in corners]
