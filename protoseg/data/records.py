"""A MoNuSeg-layout root's images and the annotation each is labelled by, and the image-wise
train / validation split.

A root holds ``images/*.tif|*.tiff|*.png|*.jpg|*.jpeg`` and, optionally,
``annotations_xml/<stem>.xml`` (Aperio polygons) and/or ``labels/<stem>.png`` (instance maps),
as the MoNuSeg release does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from protoseg.io.errors import DataError

# JPEG too: tiles exported by slide viewers often are (lossy, but the models train on it).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
LabelFormat = Literal["xml", "png"]
# Folder and suffix of each annotation format; "auto" prefers the official XML polygons,
# which the data README recommends for evaluation.
ANNOTATION_FOLDERS: dict[LabelFormat, str] = {"xml": "annotations_xml", "png": "labels"}


@dataclass(frozen=True)
class ImageRecord:
    """One image of a root and the annotation its labels come from (None: unlabelled)."""

    stem: str
    image_path: Path
    label_path: Path | None = None
    label_format: LabelFormat | None = None


def _files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in suffixes:
            continue
        if path.stem in files:
            raise DataError(f"{path}: same stem as {files[path.stem]}")
        files[path.stem] = path
    return files


def _image_files(folder: Path, what: str) -> dict[str, Path]:
    """A folder's images by stem; ``what`` names the folder in the errors."""
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} does not exist")
    images = _files(folder, IMAGE_SUFFIXES)
    if not images:
        listed = ", ".join(f"*{suffix}" for suffix in IMAGE_SUFFIXES)
        raise DataError(f"{folder}: no images ({listed})")
    return images


def find_records(
    root: str | Path, label_source: Literal["auto", "xml", "png", "none"] = "auto"
) -> list[ImageRecord]:
    """Lists a root's images, sorted by stem, with the annotation each is labelled by.

    ``xml`` / ``png`` read that folder only; ``auto`` takes ``annotations_xml/<stem>.xml``
    where it exists, else ``labels/<stem>.png``, and no labels when neither folder exists;
    ``none`` ignores annotations. With annotations, every image needs one and every
    annotation file needs its image (MoNuSeg's train root: 30 PNGs, 13 XMLs, all covered).

    Raises:
        DataError: missing or empty images folder, a missing annotation folder for ``xml``
            or ``png``, an image without annotation or an annotation without image.
    """
    if label_source not in ("auto", "xml", "png", "none"):
        raise ValueError(f"label_source must be auto, xml, png or none, not {label_source!r}")
    root = Path(root)
    image_dir = root / "images"
    images = _image_files(image_dir, "images folder")
    formats: tuple[LabelFormat, ...] = ("xml", "png") if label_source == "auto" else ()
    if label_source in ("xml", "png"):
        formats = (label_source,)
    annotations: dict[LabelFormat, dict[str, Path]] = {}
    for fmt in formats:
        folder = root / ANNOTATION_FOLDERS[fmt]
        if folder.is_dir():
            annotations[fmt] = _files(folder, (f".{fmt}",))
        elif label_source != "auto":
            raise DataError(f"{folder}: annotation folder does not exist (label_source={fmt!r})")
    for files in annotations.values():
        for stem, path in files.items():
            if stem not in images:
                raise DataError(f"{path}: annotation without image (no {image_dir}/{stem}.*)")
    records = []
    for stem, image_path in images.items():
        found = [(fmt, files[stem]) for fmt, files in annotations.items() if stem in files]
        if annotations and not found:
            expected = " or ".join(
                f"{root / ANNOTATION_FOLDERS[fmt] / stem}.{fmt}" for fmt in annotations
            )
            raise DataError(f"{image_path}: no annotation (expected {expected})")
        fmt, label_path = found[0] if found else (None, None)
        records.append(ImageRecord(stem, image_path, label_path, fmt))
    return records


def find_unlabelled(folders: list[str | Path], taken: set[str]) -> list[ImageRecord]:
    """The images of further folders as unlabelled records, sorted by stem.

    Raises:
        DataError: a missing or empty folder, or a stem that is in ``taken`` (the root's
            stems) or in two folders: pseudo masks are written and found by stem.
    """
    seen = {stem: Path("the root") for stem in taken}
    records = []
    for folder in map(Path, folders):
        for stem, path in _image_files(folder, "unlabelled image folder").items():
            if stem in seen:
                raise DataError(f"{path}: same stem as an image of {seen[stem]}")
            seen[stem] = folder
            records.append(ImageRecord(stem, path))
    return sorted(records, key=lambda record: record.stem)


def split_stems(stems: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Image-wise train/val split: a seeded permutation of the sorted stems.

    ``round(val_fraction * n)`` images (at least 1) go to validation. ``val_fraction == 0``
    returns all stems for both: validation then measures fit, not held-out performance.
    """
    stems = sorted(stems)
    if val_fraction == 0:
        return stems, stems
    n_val = max(1, round(val_fraction * len(stems)))
    if n_val >= len(stems):
        raise ValueError(f"val_fraction={val_fraction} leaves no training image among {len(stems)}")
    order = np.random.default_rng(seed).permutation(len(stems))
    val = {stems[i] for i in order[:n_val]}
    return [s for s in stems if s not in val], [s for s in stems if s in val]
