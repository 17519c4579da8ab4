"""Tissue class maps: a dataset's class codes, reading masks into class indices, writing them back.

Models, losses and metrics work on *class indices*: ``0 .. n-1`` for the scored tissue classes
(in the order of ``class_names``), ``n`` for the background / excluded area when the dataset
has one, and ``ignore_index`` (255) for pixels a pseudo mask leaves unsure. Files hold the
dataset's *codes* (WSSS4LUAD / LUAD-HistoSeg: tumor 0, stroma 1, normal 2, background 3;
BCSS-WSSS: TUM 0, STR 1, LYM 2, NEC 3, background 4), as palette PNGs whose
``np.array(Image.open(p))`` is the code map. :class:`TissueClasses` translates both ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protoseg.io.errors import DataError
from protoseg.io.images import read_code_png, write_png_atomic

#: Class index (and pseudo-mask code) of pixels left unsure: losses and metrics skip them.
IGNORE_INDEX = 255
#: White, the colour of glass: the background's default palette colour.
BACKGROUND_COLOUR = (255, 255, 255)
# Colours for classes a config gives no palette for (tab10-like, distinct on H&E).
_DEFAULT_COLOURS = (
    (0, 64, 128),
    (64, 128, 0),
    (243, 152, 0),
    (214, 39, 40),
    (148, 103, 189),
    (23, 190, 207),
    (140, 86, 75),
    (227, 119, 194),
)

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class TissueClasses:
    """A dataset's tissue classes, their file codes and colours.

    Args:
        names: scored classes, e.g. ``("tumor", "stroma", "normal")``.
        codes: the file code of each class; default ``0 .. n-1``.
        background_code: file code of the background / excluded area (not scored), or None.
        palette: one RGB colour per class, then the background's; default colours otherwise.
        ignore_index: code (in pseudo masks) and index of unsure pixels.

    Raises:
        ValueError: codes that repeat, fall outside 0-254 or collide with ``ignore_index``;
            a palette of the wrong length.
    """

    names: tuple[str, ...]
    codes: tuple[int, ...] = ()
    background_code: int | None = None
    palette: tuple[RGB, ...] = ()
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        names = tuple(str(name) for name in self.names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"class names must be non-empty and distinct, got {list(names)}")
        codes = tuple(int(c) for c in self.codes) or tuple(range(len(names)))
        if len(codes) != len(names):
            raise ValueError(f"{len(names)} class names but {len(codes)} codes: {list(codes)}")
        every = codes + (() if self.background_code is None else (int(self.background_code),))
        if len(set(every)) != len(every) or not all(0 <= c < 255 for c in every):
            raise ValueError(f"class and background codes must be distinct, in 0-254: {every}")
        if self.ignore_index in every:
            raise ValueError(f"ignore_index {self.ignore_index} is also a class code")
        palette = tuple(tuple(int(v) for v in colour) for colour in self.palette)
        if not palette:
            palette = tuple(_DEFAULT_COLOURS[i % len(_DEFAULT_COLOURS)] for i in range(len(names)))
            palette += (BACKGROUND_COLOUR,) if self.background_code is not None else ()
        if len(palette) != len(every) or any(len(c) != 3 for c in palette):
            raise ValueError(
                f"palette needs {len(every)} RGB colours (classes, then background), "
                f"got {list(palette)}"
            )
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "codes", codes)
        object.__setattr__(self, "palette", palette)

    @classmethod
    def from_config(
        cls,
        names: list[str],
        codes: list[int] | None = None,
        background_code: int | None = None,
        palette: list[tuple[int, int, int]] | None = None,
    ) -> TissueClasses:
        """From a datamodule's config values (lists, None for the defaults)."""
        colours = tuple(tuple(int(v) for v in colour) for colour in palette or ())
        return cls(tuple(names), tuple(codes or ()), background_code, colours)  # type: ignore[arg-type]

    @property
    def num_classes(self) -> int:
        """n, the number of scored classes."""
        return len(self.names)

    @property
    def num_outputs(self) -> int:
        """Class indices a model predicts: n, plus one for the background when there is one."""
        return self.num_classes + (self.background_code is not None)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The name of each class index: the class names, then ``background``."""
        return self.names + (("background",) if self.background_code is not None else ())

    @property
    def index_codes(self) -> tuple[int, ...]:
        """The file code of each class index (classes, then the background)."""
        return self.codes + (() if self.background_code is None else (self.background_code,))

    def code_to_index(self) -> np.ndarray:
        """(256,) int16 lookup: file code -> class index; ``ignore_index`` stays; -1 unknown."""
        table = np.full(256, -1, np.int16)
        table[list(self.index_codes)] = np.arange(self.num_outputs)
        table[self.ignore_index] = self.ignore_index
        return table

    def index_to_code(self) -> np.ndarray:
        """(256,) uint8 lookup: class index -> file code; ``ignore_index`` stays."""
        table = np.full(256, self.ignore_index, np.uint8)
        table[: self.num_outputs] = self.index_codes
        return table

    def describe(self) -> str:
        """``0 tumor, 1 stroma, ...`` for messages."""
        pairs = zip(self.index_codes, self.output_names, strict=True)
        return ", ".join(f"{code} {name}" for code, name in pairs)

    def palette_bytes(self) -> list[int]:
        """A 768-value PIL palette: each code's colour; unsure (``ignore_index``) grey."""
        flat = [0] * 768
        for code, colour in zip(self.index_codes, self.palette, strict=True):
            flat[3 * code : 3 * code + 3] = colour
        flat[3 * self.ignore_index : 3 * self.ignore_index + 3] = (128, 128, 128)
        return flat


def read_class_map(
    path: str | Path, classes: TissueClasses, shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Reads a mask or pseudo mask of file codes as (H, W) uint8 class indices.

    Args:
        path: PNG of codes (the dataset's; ``ignore_index`` for unsure pixels).
        classes: the dataset's classes.
        shape: the (H, W) of the image it belongs to, checked when given.

    Raises:
        DataError: unreadable file, a shape other than ``shape``, or a code that is neither a
            class, the background nor ``ignore_index`` (the message lists the known codes).
    """
    codes = read_code_png(path)
    if shape is not None and codes.shape != tuple(shape):
        raise DataError(f"{path}: mask shape {codes.shape} != image shape {tuple(shape)}")
    indices = classes.code_to_index()[codes]
    if (indices < 0).any():
        unknown = sorted(set(np.unique(codes[indices < 0]).tolist()))
        raise DataError(
            f"{path}: unknown class code(s) {unknown}; expected {classes.describe()} "
            f"or {classes.ignore_index} (unsure)"
        )
    return indices.astype(np.uint8)


def write_class_map(path: str | Path, indices: np.ndarray, classes: TissueClasses) -> None:
    """Writes (H, W) class indices as a palette PNG of the dataset's codes, atomically.

    ``np.array(Image.open(path))`` reads the codes back; viewers show the palette colours.
    """
    indices = np.asarray(indices)
    if indices.ndim != 2:
        raise ValueError(f"{path}: class map must be (H, W), got shape {indices.shape}")
    codes = classes.index_to_code()[indices.astype(np.uint8)]
    write_png_atomic(path, codes, palette=classes.palette_bytes())


def colour_classes(indices: np.ndarray, classes: TissueClasses) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 palette colours; unsure pixels grey."""
    table = np.full((256, 3), 128, np.uint8)
    table[: classes.num_outputs] = np.asarray(classes.palette, np.uint8)
    return table[np.asarray(indices).astype(np.uint8)]


def overlay_classes(
    image: np.ndarray, indices: np.ndarray, classes: TissueClasses, alpha: float = 0.45
) -> np.ndarray:
    """The image with each pixel's class colour blended in (``alpha``); background and unsure
    pixels are left as they are, so glass stays readable."""
    colours = colour_classes(indices, classes).astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    keep = np.asarray(indices) >= classes.num_classes
    blended[keep] = image[keep]
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)
