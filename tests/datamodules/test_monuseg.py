"""MoNuSeg datamodule: layout discovery, errors, split, batches, pseudo masks, determinism."""

from __future__ import annotations

import gc
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.data.datasets import collate_whole_images
from protoseg.data.records import find_records, split_stems
from protoseg.data.samplers import EpochSeedSampler
from protoseg.data.targets import instances_to_three_class
from protoseg.data.transforms import seed_transform
from protoseg.datamodules.monuseg import MoNuSegDataModule
from protoseg.io.errors import DataError

MakeRoot = Callable[..., Path]


def data(root: Path, **kwargs: object) -> MoNuSegDataModule:
    defaults = dict(crop_size=32, crops_per_epoch=6, batch_size=3, num_workers=0)
    return MoNuSegDataModule(root=str(root), **{**defaults, **kwargs})


def first_batches(module: MoNuSegDataModule, count: int = 2) -> list[dict[str, torch.Tensor]]:
    loader = module.train_dataloader()
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == count:
            break
    return batches


# --- discovery and its errors ---------------------------------------------------------------


def test_auto_prefers_xml_and_falls_back_to_png(
    tmp_path: Path, make_monuseg_root: MakeRoot
) -> None:
    root = make_monuseg_root(tmp_path / "r", n_images=4, labels=("png", "xml"))
    for stem in ("img1", "img3"):  # like MoNuSeg: XML for some images, PNG for all
        (root / "annotations_xml" / f"{stem}.xml").unlink()
    records = find_records(root, "auto")
    assert [r.stem for r in records] == ["img0", "img1", "img2", "img3"]
    assert {r.stem: r.label_format for r in records} == {
        "img0": "xml",
        "img1": "png",
        "img2": "xml",
        "img3": "png",
    }
    assert records[0].image_path.name == "img0.tif"
    assert {r.label_format for r in find_records(root, "png")} == {"png"}
    assert {r.label_path for r in find_records(root, "none")} == {None}
    with pytest.raises(DataError, match=r"img1\.png: no annotation"):
        find_records(root, "xml")
    with pytest.raises(ValueError, match="label_source"):
        find_records(root, "polygons")  # type: ignore[arg-type]


def test_no_annotation_folder_means_unlabelled(tmp_path: Path, make_monuseg_root: MakeRoot) -> None:
    root = make_monuseg_root(tmp_path / "r", labels=())
    assert all(r.label_path is None for r in find_records(root))
    with pytest.raises(DataError, match="labels: annotation folder does not exist"):
        find_records(root, "png")


def test_image_without_annotation(tmp_path: Path, make_monuseg_root: MakeRoot) -> None:
    root = make_monuseg_root(tmp_path / "r")
    (root / "labels" / "img2.png").unlink()
    with pytest.raises(DataError) as error:
        find_records(root)
    assert str(error.value).startswith(str(root / "images" / "img2.png"))
    assert "no annotation" in str(error.value)


def test_annotation_without_image(tmp_path: Path, make_monuseg_root: MakeRoot) -> None:
    root = make_monuseg_root(tmp_path / "r", labels=("xml",))
    (root / "images" / "img1.png").unlink()
    with pytest.raises(DataError) as error:
        find_records(root)
    assert str(error.value).startswith(str(root / "annotations_xml" / "img1.xml"))
    assert "annotation without image" in str(error.value)


def test_missing_or_empty_images_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"{tmp_path / 'images'}: images folder does not exist"):
        find_records(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("no pictures here")
    with pytest.raises(DataError, match=f"{tmp_path / 'images'}: no images"):
        data(tmp_path).setup("fit")


def test_pseudo_mask_missing(tmp_path: Path, make_monuseg_root: MakeRoot) -> None:
    root = make_monuseg_root(tmp_path / "r", labels=())
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(pseudo / "img0.png")
    with pytest.raises(DataError) as error:
        data(root, pseudo_mask_dir=str(pseudo)).setup("fit")
    assert str(error.value).startswith(str(pseudo / "img1.png"))
    assert "pseudo mask missing" in str(error.value)


def test_label_of_wrong_size_names_the_file(tmp_path: Path, make_monuseg_root: MakeRoot) -> None:
    root = make_monuseg_root(tmp_path / "r")
    Image.fromarray(np.zeros((60, 64), np.uint16)).save(root / "labels" / "img2.png")
    with pytest.raises(DataError, match=r"img2\.png: label shape \(60, 64\) != image shape"):
        data(root).setup("fit")


def test_corrupt_image_names_the_file(tmp_path: Path, make_monuseg_root: MakeRoot) -> None:
    root = make_monuseg_root(tmp_path / "r")
    (root / "images" / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=r"img1\.png: cannot read image"):
        data(root).setup("fit")


# --- split ------------------------------------------------------------------------------------


def test_split_stems() -> None:
    stems = [f"s{i:02d}" for i in range(30)]
    train, val = split_stems(stems[::-1], 0.2, seed=0)
    assert len(val) == 6 and len(train) == 24 and not set(train) & set(val)
    assert sorted(train + val) == stems and train == sorted(train)
    assert split_stems(stems, 0.2, seed=0) == (train, val), "input order does not matter"
    assert split_stems(stems, 0.2, seed=1)[1] != val
    assert len(split_stems(stems[:3], 0.01, seed=0)[1]) == 1, "at least one"
    assert split_stems(stems[:3], 0.0, seed=0) == (stems[:3], stems[:3])
    with pytest.raises(ValueError, match="no training image"):
        split_stems(stems[:1], 0.5, seed=0)


# --- batches ----------------------------------------------------------------------------------


def test_fit_batches(tiny_monuseg_root: Path) -> None:
    module = data(tiny_monuseg_root, val_fraction=0.34)
    module.setup("fit")
    assert len(module.train_records) == 2 and len(module.val_records) == 1
    assert module.label_sources == {"img0": "png", "img1": "png", "img2": "png"}
    batch = first_batches(module, 1)[0]
    assert batch["image"].shape == (3, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["target"].shape == (3, 32, 32) and batch["target"].dtype == torch.int64
    assert batch["instances"].shape == (3, 32, 32) and batch["instances"].dtype == torch.int64
    for target, instances in zip(batch["target"], batch["instances"], strict=True):
        expected = instances_to_three_class(instances.numpy())
        np.testing.assert_array_equal(target.numpy(), expected)
    assert -3.0 < batch["image"].mean() < 3.0, "normalised"

    (val,) = list(module.val_dataloader())
    assert val["image"].shape == (1, 3, 64, 64) and val["instances"].shape == (1, 64, 64)
    assert val["instances"].dtype == torch.int64
    assert val["stem"] == [module.val_records[0].stem]
    assert val["path"] == [str(module.val_records[0].image_path)]


def test_test_and_predict_loaders(tmp_path: Path, make_monuseg_root: MakeRoot) -> None:
    root = make_monuseg_root(tmp_path / "r", labels=("xml",))
    module = data(root)
    module.setup("test")
    tested = list(module.test_dataloader())
    assert [b["stem"][0] for b in tested] == ["img0", "img1", "img2"]
    assert all(b["instances"].max() >= 1 for b in tested), "XML rasterised"
    module.setup("predict")
    predicted = list(module.predict_dataloader())
    assert len(predicted) == 3 and "instances" not in predicted[0]
    assert predicted[0]["image"].shape == (1, 3, 64, 64)

    module = data(root, predict_batch_size=2)
    module.setup("predict")
    assert [b["stem"] for b in module.predict_dataloader()] == [["img0", "img1"], ["img2"]]
    # Whole images of two sizes never share a batch: each size is batched on its own, and
    # every image is predicted once.
    Image.new("RGB", (48, 64), "white").save(root / "images" / "img3.png")
    Image.new("RGB", (48, 64), "white").save(root / "images" / "img4.png")
    Image.new("RGB", (48, 64), "white").save(root / "images" / "img5.png")
    module = data(root, label_source="none", predict_batch_size=2)
    module.setup("predict")
    loader = module.predict_dataloader()
    batches = [(b["stem"], tuple(b["image"].shape[-2:])) for b in loader]
    assert batches == [
        (["img0", "img1"], (64, 64)),
        (["img3", "img4"], (64, 48)),
        (["img2"], (64, 64)),
        (["img5"], (64, 48)),
    ]
    assert len(loader) == 4
    # collate_whole_images still refuses a mixed batch, naming the images
    items = [module.predict_dataset[2], module.predict_dataset[3]]
    with pytest.raises(DataError, match=r"one size, got .*img2\.png \(64, 64\), .*img3\.png"):
        collate_whole_images(items)
    with pytest.raises(ValueError, match="predict_batch_size must be >= 1"):
        data(root, predict_batch_size=0)

    unlabelled = data(make_monuseg_root(tmp_path / "u", labels=()))
    with pytest.raises(DataError, match="no labelled images"):
        unlabelled.setup("test")
    unlabelled.setup("predict")
    assert len(list(unlabelled.predict_dataloader())) == 3


def test_val_fraction_zero_validates_on_all(tiny_monuseg_root: Path) -> None:
    module = data(tiny_monuseg_root, val_fraction=0.0)
    module.setup("fit")
    assert module.train_records == module.val_records == module.records
    assert len(module.store) == 3, "held once, shared by train and val"
    uncached = data(tiny_monuseg_root, cache_images=False)
    uncached.setup("fit")
    uncached.setup("predict")
    list(uncached.predict_dataloader())
    assert len(uncached.store) == 0


def test_images_too_large_for_memory_are_read_from_disk(
    tiny_monuseg_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three 64 px images with labels: 3 * 64 * 64 * (3 + 2) = 61,440 bytes.
    monkeypatch.setattr("protoseg.datamodules.monuseg.available_memory", lambda: 2 * 61_440)
    fits = data(tiny_monuseg_root, val_fraction=0.0)
    fits.setup("fit")
    assert len(fits.store) == 3
    monkeypatch.setattr("protoseg.datamodules.monuseg.available_memory", lambda: 2 * 61_439)
    module = data(tiny_monuseg_root, val_fraction=0.0)
    with pytest.warns(UserWarning, match=r"not holding the 3 images in memory .*0\.0 GiB"):
        module.setup("fit")
    assert len(module.store) == 0
    (batch,) = first_batches(module, 1)
    assert batch["image"].shape == (3, 3, 32, 32), "read from disk instead"
    assert len(list(module.val_dataloader())) == 3


def test_pseudo_masks_train_true_labels_validate(
    tmp_path: Path, make_monuseg_root: MakeRoot
) -> None:
    root = make_monuseg_root(tmp_path / "r", n_images=4)
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    for index in range(4):  # binary pseudo masks: a single square, far from the true nuclei
        mask = np.zeros((64, 64), np.uint8)
        mask[:40, :40] = 255
        Image.fromarray(mask).save(pseudo / f"img{index}.png")
    module = data(root, pseudo_mask_dir=str(pseudo), val_fraction=0.25, scale_jitter=0.0)
    module.setup("fit")
    assert len(module.train_records) == 3 and len(module.val_records) == 1
    for batch in first_batches(module):
        assert set(np.unique(batch["instances"])) <= {0, 1}, "pseudo mask: one object"
    (val,) = list(module.val_dataloader())
    assert val["instances"].max() > 1, "validation keeps the true labels"

    shutil.rmtree(root / "labels")
    no_labels = data(root, pseudo_mask_dir=str(pseudo))
    no_labels.setup("fit")
    assert len(no_labels.train_records) == 4 and no_labels.val_dataloader() == []


def test_unlabelled_training_yields_images_only(
    tmp_path: Path, make_monuseg_root: MakeRoot
) -> None:
    module = data(make_monuseg_root(tmp_path / "r", labels=()))
    module.setup("fit")
    (batch,) = first_batches(module, 1)
    assert set(batch) == {"image"} and module.val_dataloader() == []


def unlabelled_folder(tmp_path: Path, make_monuseg_root: MakeRoot, stems: list[str]) -> Path:
    """A folder of images only (no annotations), named ``stems``."""
    images = make_monuseg_root(tmp_path / "extra_root", n_images=len(stems), labels=()) / "images"
    folder = tmp_path / "extra"
    folder.mkdir()
    for path, stem in zip(sorted(images.iterdir()), stems, strict=True):
        shutil.copy(path, folder / f"{stem}{path.suffix}")
    return folder


def test_unlabelled_dirs_train_and_predict_but_never_score(
    tmp_path: Path, make_monuseg_root: MakeRoot
) -> None:
    root = make_monuseg_root(tmp_path / "r", n_images=4)
    extra = unlabelled_folder(tmp_path, make_monuseg_root, ["tile_a", "tile_b"])
    module = data(root, unlabelled_dirs=[str(extra)], val_fraction=0.25, scale_jitter=0.0)
    module.setup("fit")
    alone = data(root, val_fraction=0.25)
    alone.setup("fit")
    assert module.val_records == alone.val_records, "the root's split as without the folder"
    (held,) = [r.stem for r in module.val_records]
    train = [r.stem for r in module.train_records]
    assert train == [r.stem for r in alone.train_records] + ["tile_a", "tile_b"]
    # Labelled and unlabelled images train together: every crop is an image only.
    assert module.train_dataset is not None
    assert all(r.label_path is None for r in module.train_dataset.records)
    stems = {
        module.train_dataset.records[int(np.random.default_rng(s).integers(5))].stem
        for s in range(40)
    }
    assert {"tile_a", "tile_b"} <= stems
    (batch,) = first_batches(module, 1)
    assert set(batch) == {"image"}
    (val,) = list(module.val_dataloader())
    assert val["stem"] == [held] and val["instances"].max() > 1
    module.setup("test")
    assert module.test_dataset is not None
    assert [r.stem for r in module.test_dataset.records] == ["img0", "img1", "img2", "img3"]
    module.setup("predict")
    predicted = [item["stem"] for item in module.predict_dataset]  # type: ignore[union-attr]
    assert predicted == ["img0", "img1", "img2", "img3", "tile_a", "tile_b"]

    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    for stem in train:
        mask = np.zeros((64, 64), np.uint8)
        mask[:40, :40] = 255
        Image.fromarray(mask).save(pseudo / f"{stem}.png")
    with_masks = data(root, unlabelled_dirs=[str(extra)], pseudo_mask_dir=str(pseudo))
    with_masks.setup("fit")
    for batch in first_batches(with_masks):
        assert set(np.unique(batch["instances"])) <= {0, 1}, "pseudo masks for all five"
    (pseudo / "tile_b.png").unlink()
    missing = data(root, unlabelled_dirs=[str(extra)], pseudo_mask_dir=str(pseudo))
    with pytest.raises(DataError, match=r"tile_b\.png: pseudo mask missing"):
        missing.setup("fit")


def test_unlabelled_dirs_errors(tmp_path: Path, make_monuseg_root: MakeRoot) -> None:
    root = make_monuseg_root(tmp_path / "r", n_images=2)
    with pytest.raises(DataError, match=r"nowhere: unlabelled image folder does not exist"):
        data(root, unlabelled_dirs=[str(tmp_path / "nowhere")]).setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no images"):
        data(root, unlabelled_dirs=[str(tmp_path / "empty")]).setup("fit")
    clash = unlabelled_folder(tmp_path, make_monuseg_root, ["tile", "img1"])
    with pytest.raises(DataError, match=r"img1\.png: same stem as an image of the root"):
        data(root, unlabelled_dirs=[str(clash)]).setup("fit")
    twice = tmp_path / "twice"
    twice.mkdir()
    shutil.copy(clash / "tile.tif", twice / "tile.png")
    (clash / "img1.png").unlink()
    with pytest.raises(DataError, match=r"twice/tile\.png: same stem as an image of .*extra"):
        data(root, unlabelled_dirs=[str(clash), str(twice)]).setup("fit")


def test_jpeg_images_are_found(tmp_path: Path, make_monuseg_root: MakeRoot) -> None:
    root = make_monuseg_root(tmp_path / "r", labels=())
    Image.open(root / "images" / "img1.png").save(root / "images" / "img3.jpg", quality=95)
    Image.open(root / "images" / "img2.png").save(root / "images" / "img4.JPEG", quality=95)
    assert [r.stem for r in find_records(root)] == ["img0", "img1", "img2", "img3", "img4"]


def test_images_at_another_resolution_are_resampled_with_their_labels(
    tmp_path: Path, make_monuseg_root: MakeRoot
) -> None:
    # 64 px images at 0.5 µm/px read for models at 0.25 µm/px: 128 px, labels alike.
    root = make_monuseg_root(tmp_path / "r", n_images=2, labels=("png", "xml"))
    (root / "annotations_xml" / "img1.xml").unlink()  # img0 from XML, img1 from PNG
    native = data(root, val_fraction=0.0)
    native.setup("fit")
    module = data(root, val_fraction=0.0, image_mpp=0.5, mpp=0.25)
    module.setup("fit")
    for plain, resampled in zip(native.val_dataloader(), module.val_dataloader(), strict=True):
        assert resampled["image"].shape == (1, 3, 128, 128)
        # Validation scores at the files' own resolution: the labels as the plain root's.
        torch.testing.assert_close(resampled["instances"], plain["instances"])
        # Training reads them at the models' resolution, with the image.
        (record,) = [r for r in module.records if [r.stem] == plain["stem"]]
        image, labels = module.store.load(record)
        assert image.shape == (128, 128, 3) and labels is not None
        nearest = np.repeat(np.repeat(plain["instances"][0].numpy(), 2, 0), 2, 1)
        agree = ((labels > 0) == (nearest > 0)).mean()
        # PNG maps: exactly the nearest resize; XML polygons drawn on the finer grid differ
        # only along outlines.
        assert agree == 1.0 if plain["stem"] == ["img1"] else agree > 0.97
        # the image's dark nuclei stay under their labels
        grey = resampled["image"][0].mean(0).numpy()
        assert grey[labels > 0].mean() < grey[labels == 0].mean() - 0.5
    assert len(module.store) == 2 and len(module.store._labels) == 4, "both grids held"
    (crops,) = first_batches(module, 1)
    assert crops["image"].shape == (3, 3, 32, 32)

    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    for index in range(2):  # pseudo masks at the images' own 64 px, as the writer leaves them
        Image.fromarray(np.where(plain_mask(index), 255, 0).astype(np.uint8)).save(
            pseudo / f"img{index}.png"
        )
    trained = data(
        root, pseudo_mask_dir=str(pseudo), image_mpp=0.5, crop_size=128, val_fraction=0.0
    )
    trained.setup("fit")
    image, instances = trained.store.load(trained.train_dataset.records[0])
    assert image.shape == (128, 128, 3) and instances.shape == (128, 128)
    np.testing.assert_array_equal(instances > 0, np.repeat(np.repeat(plain_mask(0), 2, 0), 2, 1))

    module.setup("predict")
    (batch, _) = list(module.predict_dataloader())
    assert batch["image"].shape == (1, 3, 128, 128)
    with pytest.raises(ValueError, match="mpp and image_mpp must be > 0"):
        data(root, image_mpp=0.0)


def test_auto_image_mpp_reads_the_scale_from_the_nuclei(
    tmp_path: Path,
    make_monuseg_root: MakeRoot,
    nuclei_discs: Callable[..., np.ndarray],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The fixture's nuclei are 4-7 px in radius, about half MoNuSeg's 10 px at 0.25 µm/px.
    root = make_monuseg_root(tmp_path / "r", n_images=3, size=96)
    module = data(root, val_fraction=0.0, image_mpp="auto")
    module.setup("fit")
    assert 1.5 < module.store.scale < 2.5
    (batch,) = list(module.val_dataloader())[:1]
    assert batch["image"].shape[-1] == round(96 * module.store.scale)
    said = capsys.readouterr().err
    assert "no image_mpp given" in said and "resampled by" in said and str(root) in said
    # Nuclei of MoNuSeg's size are read as they are.
    big = tmp_path / "big"
    (big / "images").mkdir(parents=True)
    for seed in range(2):
        Image.fromarray(nuclei_discs(10, seed=seed)).save(big / "images" / f"im{seed}.png")
    native = data(big, image_mpp="auto", label_source="none")
    native.setup("predict")
    assert native.store.scale == 1.0
    assert "read as they are" in capsys.readouterr().err
    # Glass only: no scale to read, and the error names the root.
    glass = tmp_path / "glass"
    (glass / "images").mkdir(parents=True)
    Image.fromarray(np.full((64, 64, 3), 240, np.uint8)).save(glass / "images" / "g.png")
    with pytest.raises(DataError, match="image_mpp auto: no nuclei"):
        data(glass, image_mpp="auto", label_source="none").setup("predict")
    with pytest.raises(ValueError, match="image_mpp must be a number, 'auto' or None"):
        data(root, image_mpp="fast")


def plain_mask(index: int) -> np.ndarray:
    mask = np.zeros((64, 64), bool)
    mask[8 + index : 30, 10:40] = True
    return mask


def test_images_smaller_than_a_crop_are_refused(tiny_monuseg_root: Path) -> None:
    """A 64 px image in a 96 px crop would be 56% white padding."""
    module = data(tiny_monuseg_root, crop_size=96, scale_jitter=0.0, batch_size=6)
    with pytest.raises(DataError, match=r"img0.tif: 64 x 64 px .* smaller than --data.crop_size"):
        module.setup("fit")
    # At 0.5 µm/px the images are read at twice their size: 128 px, crops fit.
    data(tiny_monuseg_root, crop_size=96, image_mpp=0.5).setup("fit")


# --- determinism ------------------------------------------------------------------------------


def batches_for(root: Path, seed: int, num_workers: int, epochs: int = 1) -> list[torch.Tensor]:
    L.seed_everything(seed, workers=True)
    module = data(root, num_workers=num_workers)
    module.setup("fit")
    loader = module.train_dataloader()
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        out += [torch.cat([b["image"].flatten(), b["target"].flatten().float()]) for b in loader]
    del loader
    gc.collect()  # stops the persistent workers here, not at a random later collection
    return out


def test_same_seed_same_batches_whatever_the_workers(tiny_monuseg_root: Path) -> None:
    reference = batches_for(tiny_monuseg_root, 3, num_workers=0, epochs=2)
    assert len(reference) == 4
    for a, b in zip(reference, batches_for(tiny_monuseg_root, 3, num_workers=2), strict=False):
        torch.testing.assert_close(a, b)
    other = batches_for(tiny_monuseg_root, 4, num_workers=0)
    assert not torch.equal(reference[0], other[0]), "another seed, other crops"
    assert not torch.equal(reference[0], reference[2]), "another epoch, other crops"


def test_sampler_epochs() -> None:
    sampler = EpochSeedSampler(5, base_seed=11)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == 5 and first != second
    sampler.set_epoch(0)
    assert list(sampler) == first, "set_epoch replays an epoch (resuming)"


def test_seeded_flips_are_independent() -> None:
    # Compose.set_random_seed would give both flips one seed, so they would always agree.
    flips = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    image = np.arange(4, dtype=np.uint8).reshape(2, 2)
    seen = set()
    for seed in range(40):
        seed_transform(flips, seed)
        out = flips(image=image)["image"]
        seen.add((out[0, 0] in (1, 3), out[0, 0] in (2, 3)))
    assert seen == {(False, False), (True, False), (False, True), (True, True)}
    seed_transform(flips, 5)
    first = flips(image=image)["image"]
    seed_transform(flips, 5)
    np.testing.assert_array_equal(flips(image=image)["image"], first)
    random.seed(0)  # the global generators play no part
    seed_transform(flips, 5)
    np.testing.assert_array_equal(flips(image=image)["image"], first)


# --- real data --------------------------------------------------------------------------------


def test_real_train_root_layout(monuseg_train: Path) -> None:
    records = find_records(monuseg_train, "auto")
    formats = [r.label_format for r in records]
    assert len(records) == 30 and formats.count("xml") == 13 and formats.count("png") == 17


def test_real_images_through_the_datamodule(monuseg_train: Path, tmp_path: Path) -> None:
    root = tmp_path / "two"
    for folder in ("images", "labels", "annotations_xml"):
        (root / folder).mkdir(parents=True)
    # One image labelled by XML, one by PNG only; links, not copies, of the shared data.
    for stem, folders in [
        ("TCGA-B0-5710-01Z-00-DX1", ("labels", "annotations_xml")),
        ("TCGA-18-5592-01Z-00-DX1", ("labels",)),
    ]:
        (root / "images" / f"{stem}.tif").symlink_to(monuseg_train / "images" / f"{stem}.tif")
        for folder in folders:
            suffix = ".xml" if folder == "annotations_xml" else ".png"
            name = f"{stem}{suffix}"
            (root / folder / name).symlink_to(monuseg_train / folder / name)
    module = data(root, val_fraction=0.0, crop_size=128, crops_per_epoch=2, batch_size=2)
    module.setup("fit")
    assert set(module.label_sources.values()) == {"xml", "png"}
    (batch,) = first_batches(module, 1)
    assert batch["image"].shape == (2, 3, 128, 128)
    val = list(module.val_dataloader())
    assert [b["image"].shape for b in val] == [(1, 3, 1000, 1000)] * 2
    assert all(b["instances"].max() > 200 for b in val), "hundreds of nuclei per image"
