"""Whole-slide tile datamodule: slide discovery, batches, determinism, jitter, pickling."""

from __future__ import annotations

import pickle
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import tifffile
import torch
from skimage.draw import disk

import protoseg.datamodules.wsi as wsi_module
from protoseg.datamodules.wsi import WSITileDataModule, WSITileDataset, find_slides
from protoseg.io.errors import DataError


def write_slide(path: Path, image: np.ndarray, mpp: float = 0.5) -> Path:
    """Two-level tiled TIFF (one page per level), which OpenSlide opens as generic-tiff."""
    half = image.reshape(image.shape[0] // 2, 2, image.shape[1] // 2, 2, 3).mean((1, 3))
    with tifffile.TiffWriter(path) as writer:
        for level, pixels in enumerate([image, half.round().astype(np.uint8)]):
            writer.write(
                pixels,
                tile=(128, 128),
                photometric="rgb",
                compression="zlib",
                subfiletype=1 if level else 0,
                resolution=(1e4 / (mpp * 2**level),) * 2,
                resolutionunit="CENTIMETER",
            )
    return path


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one 1024 px slide at 0.5 µm/px: a pink disk with purple dots on white."""
    folder = tmp_path_factory.mktemp("slides")
    image = np.full((1024, 1024, 3), 255, np.uint8)
    image[disk((512, 512), 350)] = (230, 150, 190)
    for row, col in np.random.default_rng(0).integers(250, 774, size=(40, 2)):
        image[disk((row, col), 6)] = (95, 60, 140)
    write_slide(folder / "slide.tif", image)
    (folder / "notes.txt").write_text("not a slide\n")
    return folder


def data(slides: list[str], **kwargs: object) -> WSITileDataModule:
    defaults = dict(mpp=1.0, tile_size=32, tiles_per_epoch=8, batch_size=4, num_workers=0)
    module = WSITileDataModule(slides=slides, **{**defaults, **kwargs, "thumbnail_size": 256})
    module.setup("fit")
    return module


def first_batch(module: WSITileDataModule, seed: int = 0) -> torch.Tensor:
    L.seed_everything(seed, verbose=False)
    return next(iter(module.train_dataloader()))["image"]


def test_find_slides_lists_folders_sorted_and_rejects_missing(tmp_path: Path) -> None:
    for name in ("b.tif", "a.SVS", "c.ndpi", "notes.txt", ".hidden.svs"):
        (tmp_path / name).write_bytes(b"")
    single = tmp_path / "notes.txt"
    assert find_slides([tmp_path, single]) == [
        tmp_path / "a.SVS",
        tmp_path / "b.tif",
        tmp_path / "c.ndpi",
        single,
    ]
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'}: .*does not exist"):
        find_slides([tmp_path / "nope"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"{empty}: no slides"):
        find_slides([str(empty)])


def test_batch_shape_range_and_reproducibility(slide_dir: Path) -> None:
    module = data([str(slide_dir)])
    assert [s.path.name for s in module.slide_tiles] == ["slide.tif"]
    assert module.slide_tiles[0].base_mpp == pytest.approx(0.5)
    assert 0 < len(module.slide_tiles[0].corners) < 16 * 16
    batch = next(iter(module.train_dataloader()))
    assert set(batch) == {"image"}
    images = batch["image"]
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images.mean() < 0.95  # tissue tiles, not glass
    assert torch.equal(first_batch(module, 0), first_batch(module, 0))
    assert not torch.equal(first_batch(module, 0), first_batch(module, 1))


def test_workers_give_the_same_batch(slide_dir: Path) -> None:
    in_process = first_batch(data([str(slide_dir)]))
    in_worker = first_batch(data([str(slide_dir)], num_workers=1))
    assert torch.equal(in_process, in_worker)


def test_jitter_moves_tiles_off_the_grid_and_keeps_them_inside(
    slide_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = data([str(slide_dir)])
    dataset = module.train_dataset
    assert dataset is not None
    corners = {tuple(c) for c in module.slide_tiles[0].corners.tolist()}
    read = []

    def fake_read(slide: object, x: int, y: int, size: int, mpp: float, base: float) -> np.ndarray:
        read.append((x, y))
        return np.zeros((size, size, 3), np.uint8)

    monkeypatch.setattr(wsi_module, "read_region_at_mpp", fake_read)
    for seed in range(200):
        dataset[seed]
    side = 32 * 1.0 / 0.5
    assert all(x >= 0 and y >= 0 and x + side <= 1024 and y + side <= 1024 for x, y in read)
    assert len(set(read) - corners) > 100
    assert all(min(abs(x - cx) + abs(y - cy) for cx, cy in corners) <= side for x, y in read)


def test_dataset_pickles_without_open_slides(slide_dir: Path) -> None:
    dataset = data([str(slide_dir)]).train_dataset
    assert isinstance(dataset, WSITileDataset)
    item = dataset[7]["image"]
    assert dataset._handles  # opened lazily by the read
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._handles == {}
    assert torch.equal(copy[7]["image"], item)
    dataset.close()


def test_slides_without_tissue_tiles_raise(tmp_path: Path) -> None:
    write_slide(tmp_path / "glass.tif", np.full((256, 256, 3), 250, np.uint8))
    with pytest.raises(DataError, match="glass.tif: no 32 px tile"):
        data([str(tmp_path)])


def test_real_svs_batch(shared_data: Path) -> None:
    folder = shared_data / "wsi"
    if not (folder / "CMU-1-Small-Region.svs").is_file():
        pytest.skip(f"real slide {folder / 'CMU-1-Small-Region.svs'} is absent")
    module = data([str(folder)], mpp=0.5, batch_size=2)
    images = first_batch(module)
    assert images.shape == (2, 3, 32, 32)
    assert images.std() > 0.02
