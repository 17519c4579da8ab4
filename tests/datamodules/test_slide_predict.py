"""Slide prediction datamodule: grid cover, cores, tissue detection, batches, DDP sharding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import write_pyramid
from skimage.draw import disk

from protoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from protoseg.datamodules.slide_predict import (
    SlideShardSampler,
    SlideTileDataset,
    WSIPredictDataModule,
    slide_grid,
)
from protoseg.io.errors import DataError
from protoseg.visualize import denormalize

PINK, PURPLE = (230, 150, 190), (95, 60, 140)


@pytest.fixture(scope="module")
def half_tissue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """512 x 384 px at 0.5 µm/px, 3 levels: tissue (pink, purple dots) in the left 192 px
    only, the rest white glass."""
    image = np.full((384, 512, 3), 255, np.uint8)
    image[:, :192] = PINK
    for row, col in np.random.default_rng(0).integers(10, 180, size=(30, 2)):
        image[disk((row * 2, col), 5, shape=image.shape[:2])] = PURPLE
    return write_pyramid(tmp_path_factory.mktemp("slides") / "half.tif", image, mpp=0.5)


def test_grid_covers_the_slide_and_cores_partition_it(half_tissue: Path) -> None:
    grid = slide_grid(half_tissue, mpp=1.0, tile_size=64, overlap=16, min_tissue=None)
    assert grid.downsample == pytest.approx(2.0) and grid.base_mpp == pytest.approx(0.5)
    # 256 x 192 tile px, stride 48: cols 0..4 (last at 192..256), rows 0..3 (144..208).
    assert grid.grid_shape == (4, 5) and len(grid.tiles) == 20
    origins = grid.origins(grid.tiles)
    assert origins[:, 0].max() + 64 * 2 >= 512 and origins[:, 1].max() + 64 * 2 >= 384
    # Every level-0 point is in exactly one core; core boundaries lie 8 tile px (16 level-0
    # px) inside the overlap.
    cores = grid.cores(grid.tiles)
    points = np.random.default_rng(1).uniform(0, [512, 384], size=(2000, 2))
    inside = (
        (cores[None, :, 0] <= points[:, None, 0])
        & (points[:, None, 0] < cores[None, :, 2])
        & (cores[None, :, 1] <= points[:, None, 1])
        & (points[:, None, 1] < cores[None, :, 3])
    )
    assert (inside.sum(1) == 1).all()
    second = grid.cores(np.array([[1, 1]]))[0]
    assert second.tolist() == [96 + 16, 96 + 16, 192 + 16, 192 + 16]
    assert grid.cores(np.array([[0, 3]]))[0].tolist() == [-np.inf, 288 + 16, 96 + 16, np.inf]


def test_tissue_detection_skips_blank_areas(half_tissue: Path) -> None:
    every = slide_grid(half_tissue, 1.0, 64, 16, min_tissue=None, thumbnail_size=256)
    tissue = slide_grid(half_tissue, 1.0, 64, 16, min_tissue=0.0, thumbnail_size=256)
    # Columns whose core starts left of x = 192 (level 0) hold tissue: cols 0 and 1
    # (cores up to 112 and 208); col 2 begins at 208 on glass.
    assert sorted(set(tissue.tiles[:, 0].tolist())) == [0, 1]
    assert len(tissue.tiles) == 8 < len(every.tiles)
    cores = tissue.cores(tissue.tiles)
    assert (cores[:, 0] < 192).all()


def test_batches_carry_normalised_tiles_and_metadata(half_tissue: Path) -> None:
    module = WSIPredictDataModule(
        [str(half_tissue)], mpp=1.0, tile_size=64, overlap=16, batch_size=3, num_workers=0,
        thumbnail_size=256,
    )  # fmt: skip
    module.setup("predict")
    batches = list(module.predict_dataloader())
    assert sum(len(b["stem"]) for b in batches) == 8
    batch = batches[0]
    assert batch["image"].shape == (3, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["core"].shape == (3, 4) and batch["core"].dtype == torch.float64
    assert batch["x"].tolist() == [0, 96, 0] and batch["y"].tolist() == [0, 0, 96]
    assert batch["downsample"].tolist() == pytest.approx([2.0] * 3)
    assert batch["stem"][1] == "half_96_0" and batch["path"][0] == str(half_tissue)
    # The tile is the level-1 image at (48, 0), normalised as the training datamodules do.
    rgb = denormalize(batch["image"][1].numpy(), IMAGENET_MEAN, IMAGENET_STD)
    level1 = tifffile.imread(half_tissue, key=1)
    assert np.array_equal(rgb, level1[0:64, 48:112])


def test_shard_sampler_gives_whole_slides_to_each_rank(half_tissue: Path) -> None:
    grids = [slide_grid(half_tissue, 1.0, 64, 16, min_tissue=m) for m in (None, 0.0, None)]
    dataset = SlideTileDataset(grids, 1.0, IMAGENET_MEAN, IMAGENET_STD)
    assert len(dataset) == 20 + 8 + 20
    rank0 = list(SlideShardSampler(dataset, num_replicas=2, rank=0))
    rank1 = list(SlideShardSampler(dataset, num_replicas=2, rank=1))
    assert rank0 == list(range(0, 20)) + list(range(28, 48))
    assert rank1 == list(range(20, 28))
    assert list(SlideShardSampler(dataset)) == list(range(48))


def test_bad_arguments_and_files(tmp_path: Path, half_tissue: Path) -> None:
    with pytest.raises(ValueError, match="overlap"):
        WSIPredictDataModule([str(half_tissue)], tile_size=64, overlap=64)
    with pytest.raises(ValueError, match="overlap"):
        WSIPredictDataModule([str(half_tissue)], tile_size=64, overlap=7)
    other = tmp_path / "other"
    other.mkdir()
    (other / "half.tif").write_bytes(half_tissue.read_bytes())
    module = WSIPredictDataModule([str(half_tissue), str(other)], tile_size=64, overlap=16)
    with pytest.raises(DataError, match="same output name"):
        module.setup("predict")
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"not a slide")
    with pytest.raises(DataError, match=f"{broken}"):
        WSIPredictDataModule([str(broken)], tile_size=64, overlap=16).setup("predict")


def test_real_svs_grid(shared_data: Path) -> None:
    path = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip(f"real slide {path} is absent")
    every = slide_grid(path, mpp=2.0, tile_size=128, overlap=16, min_tissue=None)
    tissue = slide_grid(path, mpp=2.0, tile_size=128, overlap=16)
    assert every.base_mpp == pytest.approx(0.499, abs=1e-3)
    assert every.dimensions == (2220, 2967)
    assert every.downsample == pytest.approx(2.0 / 0.499, rel=1e-3)
    assert 0 < len(tissue.tiles) <= len(every.tiles)
    origins = every.origins(every.tiles)
    assert origins.min() == 0 and (origins + 128 * every.downsample).max(0).tolist() >= [
        2220,
        2967,
    ]
