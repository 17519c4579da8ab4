"""Reading H&E images and instance maps, writing PNG and text files atomically."""

from __future__ import annotations

import os
import re
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage as ndi

from protoseg.io.errors import DataError
from protoseg.io.notices import notice_once

# 8-connectivity: a binary mask's nucleus whose outline steps diagonally stays one object.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
PIXEL_LIMIT_VARIABLE = "PROTOSEG_MAX_IMAGE_PIXELS"
"""Environment variable with the most pixels an image may have (0: no limit)."""
_PILLOW_LIMIT = Image.MAX_IMAGE_PIXELS


def pixel_limit() -> int | None:
    """The most pixels an image file may have: ``$PROTOSEG_MAX_IMAGE_PIXELS`` (0 for no
    limit), else Pillow's decompression-bomb limit (89,478,485)."""
    value = os.environ.get(PIXEL_LIMIT_VARIABLE)
    if value is None:
        return _PILLOW_LIMIT
    try:
        limit = int(value)
    except ValueError:
        raise DataError(f"{PIXEL_LIMIT_VARIABLE}={value}: not a whole number") from None
    return limit if limit > 0 else None


@contextmanager
def _opened(path: str | Path) -> Iterator[Image.Image]:
    """``Image.open`` with Pillow's errors raised as a :class:`DataError` naming the file.

    An image of more than :func:`pixel_limit` pixels is refused (Pillow only warns up to
    twice its limit), naming the setting that allows it.
    """
    limit = pixel_limit()
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)):,} pixels" if found else "its size"
        raise DataError(
            f"{path}: {size}, over the {limit:,}-pixel limit against decompression bombs; "
            f"if you trust the file, set {PIXEL_LIMIT_VARIABLE} higher (0: no limit)"
        ) from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        # Pillow reports truncation as OSError and a bad header as UnidentifiedImageError.
        raise DataError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err


def _open_decoded(path: Path) -> Image.Image:
    """Opens and fully decodes an image, so that truncated pixel data fails here."""
    with _opened(path) as image:
        image.load()
        # A copy outlives the closed file; Pillow frees a closed image's pixels.
        return image.copy()


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header (no pixels decoded).

    Raises:
        DataError: the file is missing or not an image.
    """
    with _opened(path) as image:
        width, height = image.size
    return height, width


def check_image(path: str | Path) -> None:
    """Opens and decodes an image file, only to find out whether it can be read.

    Raises:
        DataError: the file is missing, not an image, truncated or too large.
    """
    _open_decoded(Path(path))


# What read_rgb does to an image that is not 8-bit RGB, by Pillow mode; said once a process.
_CONVERSIONS = {
    "1": "black-and-white image: its one channel repeated over R, G and B",
    "L": "grey image: its one channel repeated over R, G and B",
    "LA": "grey image with alpha: alpha dropped, grey repeated over R, G and B",
    "P": "palette image: converted to RGB",
    "PA": "palette image with alpha: converted to RGB, alpha dropped",
    "RGBA": "RGBA image: alpha dropped",
    "RGBa": "RGBA image: alpha dropped",
    "RGBX": "RGBX image: padding channel dropped",
    "CMYK": "CMYK image: converted to RGB",
    "YCbCr": "YCbCr image: converted to RGB",
    "I": "32-bit grey image: scaled to 8 bit (value / 257) and repeated over R, G and B",
}
for _mode in _SIXTEEN_BIT_MODES:
    _CONVERSIONS[_mode] = "16-bit grey image: scaled to 8 bit (value / 257), repeated over RGB"


def read_rgb(path: str | Path) -> np.ndarray:
    """Reads an image file as RGB.

    Grey images are repeated over three channels, alpha is dropped, palette and CMYK images
    are converted, and 16-bit (or 32-bit integer) grey is scaled to 8 bit (``value / 257``, so
    65535 -> 255). The first image of each such kind is named in a note on stderr.

    Args:
        path: any format Pillow reads (TIFF with LZW, PNG, JPEG, ...).

    Returns:
        (H, W, 3) uint8 array.

    Raises:
        DataError: the file is missing, not an image, truncated or of an unsupported mode.
    """
    path = Path(path)
    image = _open_decoded(path)
    if image.mode in _CONVERSIONS:
        notice_once(
            f"convert {image.mode}",
            f"{path}: {_CONVERSIONS[image.mode]} (further such images without a note)",
        )
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        grey = np.asarray(image).astype(np.float64) / 257.0
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "F":
        raise DataError(f"{path}: cannot read image (floating-point mode 'F' is not RGB)")
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def read_instance_png(path: str | Path) -> np.ndarray:
    """Reads an instance map: 0 = background, 1..N = objects.

    A grey PNG (8 or 16 bit, or 32-bit integer) holds instance ids. A binary mask (values a
    subset of {0, 1} or {0, 255}) is split into objects by 8-connected components, so that
    label-free stages may write plain foreground masks. Note that a real instance map with a
    single id 1 is therefore also relabelled by connectivity (identical when that object is
    connected). A palette PNG is read as its indices.

    Args:
        path: PNG (or any single-channel integer image) file.

    Returns:
        (H, W) int32 instance map.

    Raises:
        DataError: unreadable file, colour (RGB/RGBA) labels, or negative / non-integer values.
    """
    path = Path(path)
    image = _open_decoded(path)
    if image.mode not in ("1", "L", "P", "I", *_SIXTEEN_BIT_MODES):
        raise DataError(
            f"{path}: label image has mode {image.mode!r}; expected a single-channel instance "
            "map (8/16-bit grey), not a colour image"
        )
    labels = np.asarray(image)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if labels.min(initial=0) < 0:
        raise DataError(f"{path}: label image has negative values (min {labels.min()})")
    if labels.max(initial=0) > np.iinfo(np.int32).max:
        raise DataError(f"{path}: label ids exceed int32 (max {labels.max()})")
    values = np.unique(labels)
    if set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}:
        components, _ = ndi.label(labels > 0, structure=_EIGHT_CONNECTED)
        return components.astype(np.int32)
    return labels.astype(np.int32)


def read_code_png(path: str | Path) -> np.ndarray:
    """An 8-bit palette or grey image as its raw values (H, W) uint8: a class-code map,
    whose palette (if any) only colours it for viewers.

    Raises:
        DataError: unreadable file, or a colour (RGB) or 16-bit image.
    """
    path = Path(path)
    image = _open_decoded(path)
    if image.mode not in ("P", "L", "1"):
        raise DataError(
            f"{path}: class map has mode {image.mode!r}; expected an 8-bit palette or grey "
            "PNG of class codes"
        )
    return np.array(image, dtype=np.uint8)


def _write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Writes through a hidden temporary file in the same folder, then renames it.

    ``os.replace`` within one folder (one file system) is atomic: readers see either the old
    file or the complete new one, never a half-written file, even if the process is killed.
    ``os.open`` with mode 0o666 keeps the umask's permissions (``tempfile`` would give 0o600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_png_atomic(
    path: str | Path, array: np.ndarray, palette: Sequence[int] | None = None
) -> None:
    """Writes a PNG atomically, creating parent folders.

    Args:
        path: destination file.
        array: (H, W) uint8 or uint16 grey (e.g. an instance map), or (H, W, 3) uint8 RGB.
        palette: for (H, W) uint8 arrays, a flat PIL palette (up to 768 RGB values): the
            file is then a palette (P-mode) PNG whose indices are the array's values.

    Raises:
        ValueError: unsupported dtype or shape (cast instance maps with ``.astype(np.uint16)``).
    """
    array = np.asarray(array)
    grey = array.ndim == 2 and array.dtype in (np.uint8, np.uint16)
    rgb = array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8
    if not (grey or rgb):
        raise ValueError(
            f"{path}: cannot write {array.dtype} array of shape {array.shape} as PNG; expected "
            "(H, W) uint8/uint16 or (H, W, 3) uint8"
        )
    image = Image.fromarray(np.ascontiguousarray(array))
    if palette is not None:
        if array.dtype != np.uint8 or array.ndim != 2:
            raise ValueError(f"{path}: a palette PNG needs an (H, W) uint8 array")
        # An "L" image with a palette becomes "P" with its values as the indices.
        image.putpalette(list(palette))
    _write_atomic(path, lambda handle: image.save(handle, format="PNG"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Writes bytes atomically (temporary file + rename), creating parent folders."""
    _write_atomic(path, lambda handle: handle.write(data))


def write_npy_atomic(path: str | Path, array: np.ndarray) -> None:
    """Writes an ``.npy`` array atomically (temporary file + rename), creating parent folders."""
    _write_atomic(path, lambda handle: np.save(handle, array))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Writes UTF-8 text atomically (temporary file + rename), creating parent folders."""
    write_bytes_atomic(path, text.encode("utf-8"))
