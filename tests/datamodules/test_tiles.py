"""Unlabelled random crops from a folder tree: content, reproducibility, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.datamodules.tiles import TileFolderDataModule, find_images, random_crop
from protoseg.io.errors import DataError


@pytest.fixture
def tile_root(tmp_path: Path) -> Path:
    """Three random images in nested folders (one smaller than the crop), plus a non-image."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tiles"
    (root / "a" / "b").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "x.png")
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(root / "a" / "y.JPG")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / "a/b/z.tif")
    (root / "notes.txt").write_text("not an image")
    return root


def loader_batches(data: TileFolderDataModule, epochs: int = 1) -> list[torch.Tensor]:
    data.setup("fit")
    loader = data.train_dataloader()
    batches = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        batches += [batch["image"] for batch in loader]
    return batches


def tiny(root: Path, **kwargs: object) -> TileFolderDataModule:
    # min_side leaves out z.tif (20 px), smaller than a crop
    defaults = dict(crop_size=32, crops_per_epoch=8, batch_size=4, num_workers=0, min_side=32)
    return TileFolderDataModule(str(root), **{**defaults, **kwargs})


def test_finds_images_recursively(tile_root: Path) -> None:
    names = [p.name for p in find_images(tile_root)]
    assert names == ["z.tif", "y.JPG", "x.png"]  # sorted by path: a/b/z, a/y, x


def test_batches_are_unnormalised_float_crops(tile_root: Path) -> None:
    torch.manual_seed(0)
    batches = loader_batches(tiny(tile_root))
    assert len(batches) == 2
    for images in batches:
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
        assert images.min() >= 0 and images.max() <= 1


def test_small_images_are_padded_white() -> None:
    image = np.zeros((10, 20, 3), np.uint8)
    crop = random_crop(image, 16, np.random.default_rng(0))
    assert crop.shape == (16, 16, 3)
    assert (crop[10:] == 255).all() and (crop[:10] == 0).all()


def test_crops_are_reproducible_per_epoch(tile_root: Path) -> None:
    def run() -> list[torch.Tensor]:
        torch.manual_seed(3)
        return loader_batches(tiny(tile_root), epochs=2)

    first, second = run(), run()
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.equal(first[0], first[2]), "a new epoch gives new crops"


def test_min_side_skips_small_images(tile_root: Path) -> None:
    data = tiny(tile_root, min_side=40)
    data.setup("fit")
    assert [p.name for p in data.paths] == ["y.JPG", "x.png"]
    with pytest.raises(DataError, match="no image has a side"):
        tiny(tile_root, min_side=1000).setup("fit")


def test_image_smaller_than_a_crop_is_refused(tile_root: Path) -> None:
    with pytest.raises(DataError, match=r"z.tif: 20 x 20 px, smaller than crop_size 32"):
        tiny(tile_root, min_side=None).setup("fit")


def test_missing_or_empty_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing"):
        tiny(tmp_path / "missing").setup("fit")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("")
    with pytest.raises(DataError, match="empty.*no images"):
        tiny(tmp_path / "empty").setup("fit")


def test_unreadable_image_is_named(tile_root: Path) -> None:
    (tile_root / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        tiny(tile_root).setup("fit")


def test_bad_sizes_are_refused(tile_root: Path) -> None:
    with pytest.raises(ValueError, match="crops_per_epoch"):
        tiny(tile_root, crops_per_epoch=2)
    with pytest.raises(ValueError, match="crop_size"):
        tiny(tile_root, crop_size=0)


def test_monuseg_images_are_a_valid_root(monuseg_train: Path) -> None:
    torch.manual_seed(0)
    data = tiny(monuseg_train / "images", crops_per_epoch=4)
    (images,) = loader_batches(data)
    assert len(data.paths) == 30 and images.shape == (4, 3, 32, 32)
