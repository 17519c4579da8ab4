"""BCData layout: HDF5 points, splits, label-free training crops, PSM detection scores."""

from __future__ import annotations

from pathlib import Path

import h5py
import lightning as L
import numpy as np
import pytest
from PIL import Image

from protoseg.datamodules.bcdata import BCDataDataModule, find_split, read_points_h5
from protoseg.io.errors import DataError
from protoseg.lightning_modules.psm import PSMModule
from protoseg.modules.activation_net import ShallowActivationNet
from protoseg.modules.ssl_augment import PathologyViewAugment

NEGATIVE = (70, 80, 160)  # hematoxylin blue
POSITIVE = (150, 85, 35)  # DAB brown


def write_points(path: Path, points: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("coordinates", data=np.asarray(points, dtype=np.int64).reshape(-1, 2))


def make_bcdata(root: Path, size: int = 64) -> dict[str, dict[str, np.ndarray]]:
    """Two images per split in BCData's layout: cells as disks, (x, y) centres in HDF5."""
    truth: dict[str, dict[str, np.ndarray]] = {}
    yy, xx = np.mgrid[:size, :size]
    for split_index, split in enumerate(("train", "validation", "test")):
        for index in range(2):
            rng = np.random.default_rng(10 * split_index + index)
            stem = f"{split_index}{index}"
            image = np.full((size, size, 3), 232.0)
            centres = {"positive": [], "negative": []}
            grid = [(x, y) for x in (12, 32, 52) for y in (12, 32, 52)]
            for k, (x, y) in enumerate(grid):
                kind = "positive" if (k + index) % 3 == 0 else "negative"
                image[(yy - y) ** 2 + (xx - x) ** 2 <= 20] = (
                    POSITIVE if kind == "positive" else NEGATIVE
                )
                centres[kind].append((x, y))
            image += rng.normal(0, 4, image.shape)
            folder = root / "images" / split
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{stem}.png")
            for kind, points in centres.items():
                write_points(root / "annotations" / split / kind / f"{stem}.h5", np.array(points))
            truth[stem] = {k: np.array(v, dtype=np.float32) for k, v in centres.items()}
    return truth


def test_reads_points_in_the_official_layout(tmp_path: Path) -> None:
    truth = make_bcdata(tmp_path)
    data = BCDataDataModule(
        str(tmp_path), crop_size=32, crops_per_epoch=4, batch_size=2, num_workers=0
    )
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    stem = batch["stem"][0]
    points, classes = batch["points"][0].numpy(), batch["point_classes"][0].numpy()
    np.testing.assert_array_equal(points[classes == 1], truth[stem]["positive"])
    np.testing.assert_array_equal(points[classes == 0], truth[stem]["negative"])
    train = next(iter(data.train_dataloader()))
    assert set(train) == {"image"} and train["image"].shape == (2, 3, 32, 32)
    data.setup("predict")
    assert [b["stem"][0] for b in data.predict_dataloader()] == ["20", "21"]


def test_empty_annotation_file_gives_no_points(tmp_path: Path) -> None:
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("coordinates", data=np.zeros((0, 2)))
    assert read_points_h5(path).shape == (0, 2)


def test_clear_errors_name_the_file(tmp_path: Path) -> None:
    make_bcdata(tmp_path)
    missing = tmp_path / "annotations" / "validation" / "positive" / "10.h5"
    missing.unlink()
    with pytest.raises(DataError, match=r"10\.h5: annotation missing"):
        find_split(tmp_path, "validation")
    bad = tmp_path / "not_h5.h5"
    bad.write_text("plain text")
    with pytest.raises(DataError, match="not_h5.h5: not a readable HDF5"):
        read_points_h5(bad)
    wrong_key = tmp_path / "wrong.h5"
    with h5py.File(wrong_key, "w") as handle:
        handle.create_dataset("points", data=np.zeros((2, 2)))
    with pytest.raises(DataError, match="wrong.h5: no 'coordinates'"):
        read_points_h5(wrong_key)
    with pytest.raises(DataError, match="images folder does not exist"):
        find_split(tmp_path / "nowhere", "train")


def test_psm_detects_two_cell_classes_on_the_fixture(tmp_path: Path) -> None:
    make_bcdata(tmp_path)
    L.seed_everything(0)
    model = PSMModule(
        ShallowActivationNet("test_resnet", out_indices=(0, 1)),
        augment=PathologyViewAugment(size=32, blur_p=0.0),
        projection_hidden_dim=16,
        projection_dim=8,
        cue="density",
        num_cell_classes=2,
        min_area=5,
        min_distance=4,
        detection_radius=4.0,
    )
    data = BCDataDataModule(str(tmp_path), num_workers=0)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    (metrics,) = trainer.validate(model, datamodule=data)
    # Colour separates blue and brown disks: both classes are found at their centres.
    assert metrics["val/det_f1"] > 0.9
    assert metrics["val/det_f1_class0"] > 0.9 and metrics["val/det_f1_class1"] > 0.9
