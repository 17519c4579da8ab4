"""WSSS tissue datamodule on fixtures in the official LUAD-HistoSeg and BCSS-WSSS layouts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.cli import main
from protoseg.datamodules.wsss import WSSSDataModule, fold_stems, parse_image_label
from protoseg.io.errors import DataError

BCSS_CLASSES = ["TUM", "STR", "LYM", "NEC"]


def luad(root: Path, **kwargs) -> WSSSDataModule:
    settings = {"num_workers": 0, "crop_size": 32, "crops_per_epoch": 8, **kwargs}
    return WSSSDataModule(str(root), **settings)


def bcss(root: Path, **kwargs) -> WSSSDataModule:
    return luad(root, class_names=BCSS_CLASSES, background_code=4, **kwargs)


def write_pseudo_masks(root: Path, folder: Path, content: np.ndarray | bytes) -> Path:
    """``folder/<training image's name>`` for every training image of ``root``: a PNG of
    ``content`` (codes), or ``content`` itself (bytes)."""
    folder.mkdir()
    for path in (root / "training").glob("*.png"):
        if isinstance(content, bytes):
            (folder / path.name).write_bytes(content)
        else:
            Image.fromarray(content).save(folder / path.name)
    return folder


@pytest.mark.parametrize(
    ("name", "count", "expected"),
    [
        ("436219-7159-48057-[1, 0, 0].png", 3, (1, 0, 0)),
        ("05-[0, 1, 0].png", 3, (0, 1, 0)),
        ("1031280-2300-27920-[1 0 0 1].png", 4, (1, 0, 0, 1)),
        ("TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png", 4, (1, 1, 0, 1)),
        ("plain.png", 3, None),
    ],
)
def test_image_level_labels_in_names(name: str, count: int, expected: tuple | None) -> None:
    assert parse_image_label(Path(name), count) == expected


@pytest.mark.parametrize("name", ["a-[1, 2, 0].png", "a-[1, 0].png", "a-[1, 0, 0]x.png", "a[].png"])
def test_unparseable_label_names_the_file(name: str) -> None:
    with pytest.raises(DataError) as raised:
        parse_image_label(Path(name), 3)
    assert str(raised.value).startswith(f"{name}: ") and "label" in str(raised.value)


def test_luad_layout_batches(tmp_path: Path, make_wsss_root: Callable[..., Path]) -> None:
    root = make_wsss_root(tmp_path / "luad", "luad")
    dm = luad(root)
    dm.setup("fit")
    names = sorted(p.name for p in (root / "training").glob("*.png"))
    records = dm.train_dataset.records
    assert [r.image_path.name for r in records] == names
    for record in records:
        assert record.labels == parse_image_label(record.image_path, 3)
    item = dm.train_dataset[7]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert "target" not in item and item["labels"].shape == (3,)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape[:2] == (1, 3) and batch["mask"].shape == (1, 48, 48)
    mask = np.array(Image.open(root / "val" / "mask" / f"{batch['stem'][0]}.png"))
    assert np.array_equal(batch["mask"][0].numpy(), mask)  # default codes = class indices
    present = [float((mask == c).any()) for c in range(3)]
    assert batch["labels"][0].tolist() == present


def test_background_mask_marks_the_background(
    tmp_path: Path, make_wsss_root: Callable[..., Path]
) -> None:
    root = make_wsss_root(tmp_path / "luad", "luad", n_val=1)
    # An annotator's mask that forgot a background pixel: the background-mask still rules.
    mask_path = root / "val" / "mask" / "00.png"
    mask = Image.open(mask_path)
    codes = np.array(mask)
    flags = np.array(Image.open(root / "val" / "background-mask" / "00.png"))
    codes[np.nonzero(flags)[0][0], np.nonzero(flags)[1][0]] = 0
    fixed = Image.fromarray(codes)
    fixed.putpalette(mask.getpalette())
    fixed.save(mask_path)
    dm = luad(root)
    dm.setup("validate")
    loaded = dm.val_dataset[0]["mask"].numpy()
    assert (loaded[flags == 1] == 3).all()


def test_bcss_layout(tmp_path: Path, make_wsss_root: Callable[..., Path]) -> None:
    root = make_wsss_root(tmp_path / "bcss", "bcss", n_train=3)
    dm = bcss(root)
    dm.setup("fit")
    assert all(len(r.labels) == 4 for r in dm.train_dataset.records)
    assert dm.train_dataset[0]["labels"].shape == (4,)
    masks = [dm.val_dataset[i]["mask"] for i in range(len(dm.val_dataset))]
    assert set(torch.cat([m.flatten() for m in masks]).tolist()) <= {0, 1, 2, 3, 4}
    dm.setup("test")
    assert len(dm.test_dataset) == 2
    dm.setup("predict")
    assert [r.image_path.parent.name for r in dm.predict_dataset.records] == ["train"] * 3


def test_codes_from_config_map_to_class_indices(
    tmp_path: Path, make_wsss_root: Callable[..., Path]
) -> None:
    """Masks coded 10/20/30 and background 0 read as indices 0/1/2 and 3."""
    root = make_wsss_root(tmp_path / "luad", "luad", n_val=1)
    path = root / "val" / "mask" / "00.png"
    original = np.array(Image.open(path))
    recoded = np.array([10, 20, 30, 0], np.uint8)[original]
    Image.fromarray(recoded).save(path)
    dm = luad(root, class_codes=[10, 20, 30], background_code=0)
    dm.setup("validate")
    assert np.array_equal(dm.val_dataset[0]["mask"].numpy(), original)


def test_pseudo_masks_train_with_ignore(
    tmp_path: Path, make_wsss_root: Callable[..., Path]
) -> None:
    root = make_wsss_root(tmp_path / "luad", "luad", n_train=2)
    codes = np.full((48, 48), 255, np.uint8)
    codes[:, :24] = 1
    pseudo = write_pseudo_masks(root, tmp_path / "pseudo", codes)
    dm = luad(root, pseudo_mask_dir=str(pseudo), crop_size=64, scale_jitter=0.0)
    dm.setup("fit")
    item = dm.train_dataset[3]
    values = set(item["target"].unique().tolist())
    assert values == {1, 255}  # unsure pixels and the padding of a 48 px image to 64 px
    assert item["labels"].shape == (3,)


def test_unaugmented_resized_views_repeat_exactly(
    tmp_path: Path, make_wsss_root: Callable[..., Path]
) -> None:
    # A net on a frozen encoder's cached embeddings needs each image's view to be the same
    # every time (train_view: resize, augment: false); augmented views differ.
    root = make_wsss_root(tmp_path / "luad", "luad", n_train=1)
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    for path in (root / "training").glob("*.png"):
        codes = np.full((48, 48), 2, np.uint8)
        codes[:, :24] = 1
        Image.fromarray(codes).save(pseudo / path.name)
    plain = luad(
        root, pseudo_mask_dir=str(pseudo), train_view="resize", crop_size=64, augment=False
    )
    plain.setup("fit")
    first, second = plain.train_dataset[0], plain.train_dataset[1]
    assert first["image"].shape == (3, 64, 64)
    assert torch.equal(first["image"], second["image"])
    assert torch.equal(first["target"], second["target"])
    assert first["target"][:, :32].eq(1).all() and first["target"][:, 32:].eq(2).all()
    augmented = luad(root, pseudo_mask_dir=str(pseudo), train_view="resize", crop_size=64)
    augmented.setup("fit")
    views = [augmented.train_dataset[i]["image"] for i in range(4)]
    assert not all(torch.equal(views[0], view) for view in views[1:])


def test_validation_folds_partition_the_masks(
    tmp_path: Path, make_wsss_root: Callable[..., Path]
) -> None:
    root = make_wsss_root(tmp_path / "luad", "luad", n_val=5)
    stems = [f"{i:02d}" for i in range(5)]
    folds = [fold_stems(stems, 3, k, 0) for k in range(3)]
    assert sorted(s for fold in folds for s in fold) == stems
    for k in range(3):
        dm = luad(root, train_split="val", val_folds=3, val_fold=k)
        dm.setup("fit")
        trained = {r.stem for r in dm.train_dataset.records}
        validated = {r.stem for r in dm.val_dataset.records}
        assert validated == set(folds[k]) and trained == set(stems) - validated
        assert "target" in dm.train_dataset[0]
        dm.setup("test")
        assert {r.stem for r in dm.test_dataset.records} == validated


def test_predict_reads_img_or_images(tmp_path: Path, make_wsss_root: Callable[..., Path]) -> None:
    root = make_wsss_root(tmp_path / "luad", "luad")
    dm = luad(root / "test")
    dm.setup("predict")
    assert [r.stem for r in dm.predict_dataset.records] == ["00", "01"]
    (root / "test" / "img").rename(root / "test" / "images")
    dm = luad(root, predict_dir="test")
    dm.setup("predict")
    assert len(dm.predict_dataset) == 2 and "mask" not in dm.predict_dataset[0]


@pytest.mark.parametrize("fault", ["mask_without_image", "image_without_mask", "unknown_code"])
def test_bad_masks_name_the_file(
    fault: str, tmp_path: Path, make_wsss_root: Callable[..., Path]
) -> None:
    root = make_wsss_root(tmp_path / "luad", "luad", n_val=2)
    val = root / "val"
    if fault == "mask_without_image":
        (val / "img" / "01.png").unlink()
        (val / "background-mask" / "01.png").unlink()
        expected = str(val / "mask" / "01.png") + ": mask without image"
    elif fault == "image_without_mask":
        (val / "mask" / "01.png").unlink()
        expected = str(val / "img" / "01.png") + ": image without mask"
    else:
        Image.fromarray(np.full((48, 48), 7, np.uint8)).save(val / "mask" / "01.png")
        expected = str(val / "mask" / "01.png") + ": unknown class code(s) [7]"
    dm = luad(root)
    with pytest.raises(DataError) as raised:
        dm.setup("validate")
        dm.val_dataset[1]
    assert str(raised.value).startswith(expected)


def test_missing_pseudo_mask_names_it(tmp_path: Path, make_wsss_root: Callable[..., Path]) -> None:
    root = make_wsss_root(tmp_path / "luad", "luad", n_train=2)
    (tmp_path / "pseudo").mkdir()
    with pytest.raises(DataError, match="pseudo mask missing"):
        luad(root, pseudo_mask_dir=str(tmp_path / "pseudo")).setup("fit")


def test_cli_reports_a_bad_label_in_one_line(
    tmp_path: Path, make_wsss_root: Callable[..., Path], capsys: pytest.CaptureFixture
) -> None:
    root = make_wsss_root(tmp_path / "luad", "luad", n_train=2)
    bad = root / "training" / "x-[1, 9, 0].png"
    Image.new("RGB", (40, 40)).save(bad)
    with pytest.raises(SystemExit) as stopped:
        main(
            [
                "fit",
                "--model=protoseg.lightning_modules.semantic.SemanticSegmentationModule",
                "--model.net=protoseg.modules.networks.UNet",
                "--model.class_names=[tumor,stroma,normal]",
                "--data=protoseg.datamodules.wsss.WSSSDataModule",
                f"--data.root={root}",
                "--data.num_workers=0",
                f"--trainer.default_root_dir={tmp_path / 'run'}",
                "--trainer.max_steps=1",
                "--trainer.logger=false",
            ]
        )
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"protoseg: error: {bad}: image-level label [1, 9, 0]")


def test_real_wsss4luad(shared_data: Path) -> None:
    root = shared_data / "wsss4luad"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    dm = WSSSDataModule(str(root), num_workers=0, cache_images=False)
    dm.setup("fit")
    records = dm.train_dataset.records
    assert len(records) == 41 and len(dm.val_dataset) == 31
    counts = np.sum([r.labels for r in records], axis=0)
    assert counts.tolist() == [35, 38, 3]  # the README's positives: tumor, stroma, normal
    item = dm.val_dataset[0]
    mask = np.array(Image.open(root / "validation" / "mask" / "00.png"))
    assert np.array_equal(item["mask"].numpy(), mask)


def test_balanced_classes_show_a_rare_class_as_often_as_the_others(
    tmp_path: Path, make_wsss_root: Callable[..., Path]
) -> None:
    root = make_wsss_root(tmp_path / "luad", "luad", n_train=6)
    # Only the names' labels steer the draw: one image of normal tissue, five of the others.
    for index, path in enumerate(sorted((root / "training").glob("*.png"))):
        path.rename(path.with_name(f"{index}-{'[0, 0, 1]' if index == 0 else '[1, 1, 0]'}.png"))
    plain, balanced = luad(root, crops_per_epoch=300), luad(root, crops_per_epoch=300)
    balanced.hparams.balance_classes = True
    shares = []
    for dm in (plain, balanced):
        dm.setup("fit")
        labels = torch.stack([dm.train_dataset[i]["labels"] for i in range(300)])
        shares.append(float(labels[:, 2].mean()))
    assert plain.train_dataset.class_images is None
    assert balanced.train_dataset.class_images == [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [0]]
    # Normal tissue: drawn a third of the time, against one image in six.
    assert shares[0] == pytest.approx(1 / 6, abs=0.06)
    assert shares[1] == pytest.approx(1 / 3, abs=0.06)


def test_balancing_names_a_class_no_image_holds_and_refuses_none(
    tmp_path: Path, make_wsss_root: Callable[..., Path]
) -> None:
    root = make_wsss_root(tmp_path / "luad", "luad", n_train=3)
    training = root / "training"
    for index, path in enumerate(sorted(training.glob("*.png"))):
        path.rename(path.with_name(f"{index}-[1, 1, 0].png"))
    dm = luad(root, balance_classes=True)
    with pytest.warns(
        UserWarning, match=f"{training}: balance_classes: no training image holds normal"
    ):
        dm.setup("fit")
    assert dm.train_dataset.class_images == [[0, 1, 2], [0, 1, 2]]
    # Pseudo masks: the classes come from the masks; none holds a class (all unsure).
    for index, path in enumerate(sorted(training.glob("*.png"))):
        path.rename(path.with_name(f"{index}.png"))
    pseudo = write_pseudo_masks(root, tmp_path / "pseudo", np.full((48, 48), 255, np.uint8))
    with pytest.raises(DataError, match=f"^{pseudo}: balance_classes: no training image holds any"):
        luad(root, balance_classes=True, pseudo_mask_dir=str(pseudo)).setup("fit")


def test_a_pseudo_mask_folder_that_is_a_file_is_named(
    tmp_path: Path, make_wsss_root: Callable[..., Path]
) -> None:
    root = make_wsss_root(tmp_path / "luad", "luad", n_train=2)
    (tmp_path / "pseudo").write_text("")
    with pytest.raises(DataError, match="pseudo: pseudo-mask folder is a file, not a folder"):
        luad(root, pseudo_mask_dir=str(tmp_path / "pseudo")).setup("fit")


def test_an_unreadable_pseudo_mask_is_named(
    tmp_path: Path, make_wsss_root: Callable[..., Path]
) -> None:
    root = make_wsss_root(tmp_path / "luad", "luad", n_train=2)
    pseudo = write_pseudo_masks(root, tmp_path / "pseudo", b"\x89PNG\r\n\x1a\n truncated")
    dm = luad(root, pseudo_mask_dir=str(pseudo))
    with pytest.raises(DataError, match=f"^{pseudo}/.*: cannot read image"):
        dm.setup("fit")
        dm.train_dataset[0]
