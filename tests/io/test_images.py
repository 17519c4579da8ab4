"""Image and instance-map readers; atomic PNG/text writers; clear errors on bad files."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protoseg.io.errors import DataError
from protoseg.io.images import (
    image_size,
    read_instance_png,
    read_rgb,
    write_png_atomic,
    write_text_atomic,
)


def rgb_image(size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)


def encoded(array: np.ndarray, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("suffix", "kwargs"), [(".png", {}), (".tif", {"compression": "tiff_lzw"}), (".tif", {})]
)
def test_read_rgb_round_trip(tmp_path: Path, suffix: str, kwargs: dict) -> None:
    image = rgb_image()
    path = tmp_path / f"a{suffix}"
    Image.fromarray(image).save(path, **kwargs)
    read = read_rgb(path)
    assert read.dtype == np.uint8 and read.shape == (64, 72, 3)
    np.testing.assert_array_equal(read, image)


def test_read_rgb_converts_grey_alpha_and_16_bit(tmp_path: Path) -> None:
    grey = rgb_image()[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "grey.png"), np.dstack([grey] * 3))

    rgba = np.dstack([rgb_image(), np.full((64, 72), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgba.png"), rgba[:, :, :3])

    deep = np.array([[0, 257, 65535, 32896]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "deep.png")[0, :, 0], [0, 1, 255, 128])


def test_each_kind_of_conversion_is_noted_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("protoseg.io.notices._said", set())
    grey = rgb_image()[:, :, 0]
    for name in ("grey0.png", "grey1.png"):
        Image.fromarray(grey).save(tmp_path / name)
    Image.fromarray(np.dstack([rgb_image(), grey])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb_image()).save(tmp_path / "rgb.png")
    for name in ("grey0.png", "grey1.png", "rgba.png", "rgb.png"):
        read_rgb(tmp_path / name)
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 2, notes
    assert notes[0].startswith(f"protoseg: note: {tmp_path / 'grey0.png'}: ")
    assert notes[1].startswith(f"protoseg: note: {tmp_path / 'rgba.png'}: ")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_read_rgb_rejects_bad_files(tmp_path: Path) -> None:
    cases = {
        "garbage.tif": b"this is not an image at all",
        "empty.png": b"",
        # Uncompressed TIFF keeps its header, so the truncation shows only on decoding.
        "truncated.tif": encoded(rgb_image(), "TIFF")[:-3000],
        "truncated_lzw.tif": encoded(rgb_image(), "TIFF", compression="tiff_lzw")[:-2000],
        "truncated.png": encoded(rgb_image(), "PNG")[:-3000],
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DataError, match="cannot read image") as error:
            read_rgb(path)
        assert str(error.value).startswith(str(path)), name
    with pytest.raises(DataError, match="missing.png"):
        read_rgb(tmp_path / "missing.png")


def test_read_instance_png_keeps_ids(tmp_path: Path) -> None:
    ids = np.zeros((16, 16), np.uint16)
    ids[2:5, 2:5], ids[8:12, 8:12], ids[0, 15] = 3, 70000 - 65536, 1000
    Image.fromarray(ids).save(tmp_path / "ids16.png")
    read = read_instance_png(tmp_path / "ids16.png")
    assert read.dtype == np.int32
    np.testing.assert_array_equal(read, ids)

    small = (ids % 7).astype(np.uint8)
    small[0, 0] = 5
    Image.fromarray(small).save(tmp_path / "ids8.png")
    np.testing.assert_array_equal(read_instance_png(tmp_path / "ids8.png"), small)


@pytest.mark.parametrize("on", [1, 255])
def test_binary_masks_become_8_connected_components(tmp_path: Path, on: int) -> None:
    mask = np.zeros((12, 12), np.uint8)
    mask[1:4, 1:4] = on
    mask[4, 4] = on  # touches the first square diagonally only: same object
    mask[8:11, 8:11] = on
    Image.fromarray(mask).save(tmp_path / "mask.png")
    instances = read_instance_png(tmp_path / "mask.png")
    assert instances.max() == 2
    assert instances[4, 4] == instances[1, 1] != instances[9, 9]


def test_read_instance_png_rejects_colour_and_corrupt(tmp_path: Path) -> None:
    colour = tmp_path / "colour.png"
    Image.fromarray(rgb_image()).save(colour)
    with pytest.raises(DataError, match="not a colour image") as error:
        read_instance_png(colour)
    assert str(error.value).startswith(str(colour))
    broken = tmp_path / "broken.png"
    broken.write_bytes(encoded(np.zeros((64, 64), np.uint16), "PNG")[:40])
    with pytest.raises(DataError, match="broken.png: cannot read image"):
        read_instance_png(broken)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(64 * 64, dtype=np.uint16).reshape(64, 64),
        np.arange(256, dtype=np.uint8).reshape(16, 16),
        rgb_image(),
    ],
    ids=["uint16", "uint8", "rgb"],
)
def test_write_png_atomic_round_trip(tmp_path: Path, array: np.ndarray) -> None:
    path = tmp_path / "new" / "folder" / "out.png"
    write_png_atomic(path, array)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), array)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.png"], "no temporary left"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, "permissions as open() gives"


def test_write_png_atomic_never_leaves_half_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.png"
    write_png_atomic(path, np.ones((8, 8), np.uint8))
    before = path.read_bytes()

    def crash(self: Image.Image, fp: io.BufferedWriter, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        write_png_atomic(path, np.zeros((8, 8), np.uint8))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_write_png_atomic_rejects_unsupported_arrays(tmp_path: Path) -> None:
    for array in (np.zeros((4, 4), np.int32), np.zeros((4, 4, 4), np.uint8)):
        with pytest.raises(ValueError, match="cannot write"):
            write_png_atomic(tmp_path / "x.png", array)
    assert not list(tmp_path.iterdir())


def test_write_text_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "notes.txt"
    write_text_atomic(path, "nuclei: 12\n")
    write_text_atomic(path, "nuclei: 13 µm\n")
    assert path.read_text(encoding="utf-8") == "nuclei: 13 µm\n"
    assert [p.name for p in path.parent.iterdir()] == ["notes.txt"]


def test_image_size_reads_the_header_and_names_a_bad_file(tmp_path: Path) -> None:
    Image.fromarray(rgb_image(32)).save(tmp_path / "a.png")  # 32 rows, 40 columns
    assert image_size(tmp_path / "a.png") == (32, 40)
    (tmp_path / "b.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"b\.png: cannot read image"):
        image_size(tmp_path / "b.png")
    with pytest.raises(DataError, match=r"c\.png: cannot read image"):
        image_size(tmp_path / "c.png")
