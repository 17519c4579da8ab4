"""Whole-slide reading: a real Aperio SVS and a synthetic pyramidal TIFF through OpenSlide."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import openslide
import pytest
import tifffile
from skimage.draw import disk

from protoseg.io.errors import DataError
from protoseg.io.wsi import (
    best_level,
    open_slide,
    read_region_at_mpp,
    slide_mpp,
    tissue_mask,
    tissue_tile_grid,
)

SIZE, CENTER, RADIUS = 2048, 1024, 700
PINK, PURPLE = (230, 150, 190), (95, 60, 140)


def write_pyramid(path: Path, image: np.ndarray, mpp: float | None, levels: int = 3) -> Path:
    """Tiled TIFF, one page per level (each half the last), as OpenSlide's generic TIFF reads.

    (SubIFD pyramids open as a single level in OpenSlide 4.0.)
    """
    with tifffile.TiffWriter(path) as writer:
        for level in range(levels):
            extra = {}
            if mpp is not None:  # pixels per cm
                extra = dict(resolution=(1e4 / (mpp * 2**level),) * 2, resolutionunit="CENTIMETER")
            writer.write(
                image,
                tile=(256, 256),
                photometric="rgb",
                compression="zlib",
                subfiletype=1 if level else 0,
                **extra,
            )
            height, width = image.shape[0] // 2, image.shape[1] // 2
            image = image[: 2 * height, : 2 * width].reshape(height, 2, width, 2, 3).mean((1, 3))
            image = image.round().astype(np.uint8)
    return path


@pytest.fixture(scope="module")
def pyramid_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2048 px at 0.25 µm/px, 3 levels: a pink tissue disk with purple dots on white glass."""
    image = np.full((SIZE, SIZE, 3), 255, np.uint8)
    image[disk((CENTER, CENTER), RADIUS)] = PINK
    for angle in np.linspace(0, 2 * np.pi, 12, endpoint=False):  # "nuclei", off the centre
        center = (CENTER + 450 * np.sin(angle), CENTER + 450 * np.cos(angle))
        image[disk(center, 12)] = PURPLE
    return write_pyramid(tmp_path_factory.mktemp("wsi") / "pyramid.tif", image, mpp=0.25)


@pytest.fixture
def pyramid(pyramid_path: Path) -> Iterator[openslide.OpenSlide]:
    slide = open_slide(pyramid_path)
    yield slide
    slide.close()


@pytest.fixture(scope="module")
def cmu_slide(shared_data: Path) -> Iterator[openslide.OpenSlide]:
    """The real Aperio CMU-1-Small-Region.svs (one level, 2220 x 2967 px, 0.499 µm/px)."""
    path = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip(f"real slide {path} is absent")
    slide = open_slide(path)
    yield slide
    slide.close()


# --- the synthetic pyramid --------------------------------------------------------------------


def test_pyramid_opens_with_levels_and_mpp(pyramid: openslide.OpenSlide) -> None:
    assert pyramid.properties["openslide.vendor"] == "generic-tiff"
    assert pyramid.level_count == 3
    assert pyramid.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
    assert slide_mpp(pyramid) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("downsample", "level"), [(0.5, 0), (1.0, 0), (1.9, 0), (2.0, 1), (3.97, 2), (4.0, 2), (64, 2)]
)
def test_best_level(pyramid: openslide.OpenSlide, downsample: float, level: int) -> None:
    assert best_level(pyramid, downsample) == level


def test_read_at_1um_reads_lower_level_with_right_content(
    pyramid: openslide.OpenSlide, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    read_region = pyramid.read_region

    def spy(location: tuple[int, int], level: int, size: tuple[int, int]) -> object:
        calls.append((location, level, size))
        return read_region(location, level, size)

    monkeypatch.setattr(pyramid, "read_region", spy)
    side = 64 * 4  # 64 px at 1.0 µm/px = 256 level-0 px at 0.25 µm/px
    tissue = read_region_at_mpp(pyramid, CENTER - side // 2, CENTER - side // 2, 64, 1.0, 0.25)
    glass = read_region_at_mpp(pyramid, 0, 0, 64, 1.0, 0.25)
    assert calls == [((896, 896), 2, (64, 64)), ((0, 0), 2, (64, 64))]
    assert tissue.shape == glass.shape == (64, 64, 3)
    assert tissue.dtype == np.uint8
    assert np.abs(tissue.astype(int) - PINK).max() <= 1
    assert (glass == 255).all()


@pytest.mark.parametrize("mpp", [0.125, 0.25, 0.6, 2.0])
def test_read_resizes_from_any_level(pyramid: openslide.OpenSlide, mpp: float) -> None:
    side = 32 * mpp / 0.25
    corner = round(CENTER - side / 2)
    tile = read_region_at_mpp(pyramid, corner, corner, 32, mpp, 0.25)
    assert tile.shape == (32, 32, 3)
    assert np.abs(tile.astype(int) - PINK).max() <= 2


def test_outside_the_slide_is_white(pyramid: openslide.OpenSlide) -> None:
    # OpenSlide returns transparent pixels past the edge.
    tile = read_region_at_mpp(pyramid, SIZE - 64, CENTER, 32, 0.5, 0.25)
    assert (tile[:, 16:] == 255).all()
    assert np.abs(tile[:, :16].astype(int) - 255).max() <= 1


def test_tissue_mask_finds_the_disk(pyramid: openslide.OpenSlide) -> None:
    mask, downsample = tissue_mask(pyramid, thumbnail_size=256)
    assert mask.shape == (256, 256) and mask.dtype == bool
    assert downsample == 8.0
    assert mask[128, 128] and not mask[5, 5] and not mask[250, 128]
    assert mask.mean() == pytest.approx(math.pi * RADIUS**2 / SIZE**2, abs=0.02)


def distances_to_center(x: int, y: int, side: int) -> tuple[float, float]:
    """Nearest and farthest distance from the disk's centre to a square tile."""
    near = [max(c - CENTER, 0, CENTER - c - side) for c in (x, y)]
    far = [max(abs(c - CENTER), abs(c + side - CENTER)) for c in (x, y)]
    return float(np.hypot(*near)), float(np.hypot(*far))


def test_tile_grid_counts_and_tissue(pyramid: openslide.OpenSlide) -> None:
    mask, _ = tissue_mask(pyramid, thumbnail_size=256)
    every = tissue_tile_grid(pyramid, 64, 1.0, 0.25, min_tissue=0)
    assert len(every) == 8 * 8 and every[:2] == [(0, 0), (256, 0)]
    assert len(tissue_tile_grid(pyramid, 64, 1.0, 0.25, overlap=32, min_tissue=0)) == 15 * 15
    kept = set(tissue_tile_grid(pyramid, 64, 1.0, 0.25, mask=mask))
    for x, y in every:
        nearest, farthest = distances_to_center(x, y, 256)
        if farthest < RADIUS:  # wholly on tissue
            assert (x, y) in kept
        if nearest > RADIUS:  # wholly on glass
            assert (x, y) not in kept


# --- the real Aperio slide --------------------------------------------------------------------


def test_real_svs_mpp_mask_grid_and_tile(cmu_slide: openslide.OpenSlide) -> None:
    width, height = cmu_slide.dimensions
    base_mpp = slide_mpp(cmu_slide)
    assert base_mpp == pytest.approx(0.499, abs=1e-3)
    mask, downsample = tissue_mask(cmu_slide, thumbnail_size=512)
    assert 0.05 < mask.mean() < 0.95
    assert downsample == pytest.approx(width / mask.shape[1])
    corners = tissue_tile_grid(cmu_slide, 224, 0.5, base_mpp, mask=mask)
    side = 224 * 0.5 / base_mpp
    assert 0 < len(corners) < len(tissue_tile_grid(cmu_slide, 224, 0.5, base_mpp, min_tissue=0))
    assert all(x >= 0 and y >= 0 and x + side <= width and y + side <= height for x, y in corners)
    x, y = corners[len(corners) // 2]
    tile = read_region_at_mpp(cmu_slide, x, y, 64, 1.0, base_mpp)
    assert tile.shape == (64, 64, 3) and tile.dtype == np.uint8
    assert tile.mean() < 235 and tile.std() > 10  # stained tissue, not glass


# --- errors -----------------------------------------------------------------------------------


def test_unreadable_and_missing_slides_raise_data_error(tmp_path: Path) -> None:
    text = tmp_path / "x.svs"
    text.write_text("not a slide\n")
    with pytest.raises(DataError, match=str(text)):
        open_slide(text)
    missing = tmp_path / "missing.svs"
    with pytest.raises(DataError, match=f"{missing}: slide file does not exist"):
        open_slide(missing)


def test_mpp_default_and_error_without_resolution(tmp_path: Path) -> None:
    path = write_pyramid(tmp_path / "plain.tif", np.full((256, 256, 3), 200, np.uint8), None, 1)
    slide = open_slide(path)
    try:
        assert slide_mpp(slide, default=0.5) == 0.5
        with pytest.raises(DataError, match=f"{path}: .*pass its microns per pixel"):
            slide_mpp(slide)
    finally:
        slide.close()


def test_mpp_from_tiff_resolution() -> None:
    inch = {"tiff.XResolution": "50800", "tiff.YResolution": "50800", "tiff.ResolutionUnit": "inch"}
    assert slide_mpp(SimpleNamespace(properties=inch)) == pytest.approx(0.5)
    screen = {**inch, "tiff.XResolution": "72", "tiff.YResolution": "72"}  # a default DPI
    with pytest.raises(DataError):
        slide_mpp(SimpleNamespace(properties=screen))
