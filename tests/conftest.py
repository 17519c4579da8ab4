"""Shared pytest fixtures: paths to the real data beside the project, tiny synthetic data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.draw import disk
from skimage.measure import find_contours

from protoseg.distributed import DestroyProcessGroupAtExit

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the checkout; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def monuseg_train(shared_data: Path) -> Path:
    """Root of the 30 MoNuSeg training images (images/, labels/, annotations_xml/)."""
    root = shared_data / "monuseg" / "train"
    if not (root / "images").is_dir():
        pytest.skip(f"MoNuSeg training images not found under {root}")
    return root


DISC_STROMA = (235, 170, 205)  # eosin pink
DISC_NUCLEUS = (80, 60, 150)  # hematoxylin purple-blue


def _nuclei_discs(radius: float, size: int = 240, seed: int = 0) -> np.ndarray:
    """Nuclei of ``radius`` px on a grid, jittered, on pink stroma: (size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = DISC_STROMA
    step = int(4 * radius)
    for row in range(step // 2, size - step // 2, step):
        for col in range(step // 2, size - step // 2, step):
            centre = (row + rng.integers(-2, 3), col + rng.integers(-2, 3))
            image[disk(centre, radius, shape=image.shape[:2])] = DISC_NUCLEUS
    noise = rng.normal(0, 4, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


@pytest.fixture
def nuclei_discs() -> Callable[..., np.ndarray]:
    """``make(radius, size=240, seed=0)``: an H&E-like image of nuclei of ``radius`` px."""
    return _nuclei_discs


# --- Tiny synthetic MoNuSeg-layout roots (io and datamodule tests) ---------------------------

MakeRoot = Callable[..., Path]


def synthetic_instances(size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) int32 map of ``count`` disks of radius 4-7 px; later disks overlap earlier."""
    instances = np.zeros((size, size), np.int32)
    for instance_id in range(1, count + 1):
        center = rng.integers(6, size - 6, size=2)
        instances[disk(tuple(center), rng.integers(4, 8), shape=instances.shape)] = instance_id
    return instances


def synthetic_he(instances: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 H&E-like picture: pink stroma, purple nuclei, a little noise."""
    image = np.empty((*instances.shape, 3), np.float64)
    image[:] = (235, 200, 220)
    image[instances > 0] = (95, 60, 140)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def disk_polygons(instances: np.ndarray) -> list[np.ndarray]:
    """One (N, 2) (x, y) outline per instance, as an annotator would draw it."""
    polygons = []
    for instance_id in range(1, int(instances.max()) + 1):
        mask = np.pad(instances == instance_id, 1)
        if mask.any():
            contour = max(find_contours(mask.astype(float), 0.5), key=len) - 1
            polygons.append(contour[:-1, ::-1].copy())
    return polygons


def _aperio_xml_text(polygons: list[np.ndarray]) -> str:
    """Aperio ImageScope XML with one Region per polygon, laid out as MoNuSeg's files."""
    regions = []
    for region_id, polygon in enumerate(polygons, start=1):
        vertices = "".join(f'<Vertex X="{x:.3f}" Y="{y:.3f}"/>' for x, y in polygon)
        regions.append(f'<Region Id="{region_id}"><Vertices>{vertices}</Vertices></Region>')
    return (
        '<Annotations MicronsPerPixel="0.252700"><Annotation Id="1"><Regions>'
        "<RegionAttributeHeaders/>" + "".join(regions) + "</Regions><Plots/></Annotation>"
        "</Annotations>"
    )


@pytest.fixture
def aperio_xml_text() -> Callable[[list[np.ndarray]], str]:
    """Function writing (N, 2) (x, y) polygons as the text of an Aperio XML file."""
    return _aperio_xml_text


@pytest.fixture
def make_monuseg_root() -> MakeRoot:
    """Factory writing a MoNuSeg-layout root: ``make(root, n_images=3, size=64,
    labels=("png",), seed=0)``; ``labels`` may hold "png" and/or "xml" (same nuclei), or be
    empty. Image 0 is an LZW TIFF, the others PNG. Returns ``root``."""

    def make(
        root: Path,
        n_images: int = 3,
        size: int = 64,
        labels: tuple[str, ...] = ("png",),
        seed: int = 0,
    ) -> Path:
        rng = np.random.default_rng(seed)
        for folder in ("images", *(("labels",) if "png" in labels else ())):
            (root / folder).mkdir(parents=True, exist_ok=True)
        if "xml" in labels:
            (root / "annotations_xml").mkdir(parents=True, exist_ok=True)
        for index in range(n_images):
            stem = f"img{index}"
            instances = synthetic_instances(size, 6, rng)
            picture = Image.fromarray(synthetic_he(instances, rng))
            if index == 0:
                picture.save(root / "images" / f"{stem}.tif", compression="tiff_lzw")
            else:
                picture.save(root / "images" / f"{stem}.png")
            if "png" in labels:
                Image.fromarray(instances.astype(np.uint16)).save(root / "labels" / f"{stem}.png")
            if "xml" in labels:
                text = _aperio_xml_text(disk_polygons(instances))
                (root / "annotations_xml" / f"{stem}.xml").write_text(text)
        return root

    return make


@pytest.fixture
def tiny_monuseg_root(tmp_path: Path, make_monuseg_root: MakeRoot) -> Path:
    """Three 64 px images with uint16 instance PNGs (``images/``, ``labels/``)."""
    return make_monuseg_root(tmp_path / "monuseg")


def write_pyramid(path: Path, image: np.ndarray, mpp: float, levels: int = 3) -> Path:
    """Tiled TIFF, one page per level (each half the last), as OpenSlide's generic TIFF reads."""
    with tifffile.TiffWriter(path) as writer:
        for level in range(levels):
            writer.write(
                image,
                tile=(64, 64),
                photometric="rgb",
                compression="zlib",
                subfiletype=1 if level else 0,
                resolution=(1e4 / (mpp * 2**level),) * 2,
                resolutionunit="CENTIMETER",
            )
            half = image.reshape(image.shape[0] // 2, 2, image.shape[1] // 2, 2, 3).mean((1, 3))
            image = half.round().astype(np.uint8)
    return path


def short_fit_args(run_dir: Path, max_steps: int) -> list[str]:
    """CLI overrides of a short fit into ``run_dir``: no validation, no progress bar, the
    stage config's TensorBoard logger and last ModelCheckpoint (listed last) redirected."""
    return [
        f"--trainer.max_steps={max_steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger.init_args.save_dir={run_dir}",
        f"--trainer.callbacks.init_args.dirpath={run_dir / 'checkpoints'}",
    ]


def cpu_trainer(devices: int, **kwargs: Any) -> L.Trainer:
    """A quiet CPU trainer: one process, or ``devices`` gloo ranks (``ddp_spawn``) that
    destroy their process group at exit; ``kwargs`` go to the Trainer."""
    return L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        callbacks=[DestroyProcessGroupAtExit()],
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


# --- Tiny weakly supervised tissue roots in the official layouts (WSSS datamodule tests) ----

#: Per-class mean RGB of the synthetic tissue pictures (tumour purple, stroma pink, ...).
TISSUE_COLOURS = ((110, 60, 150), (225, 140, 185), (245, 205, 220), (150, 40, 90))
WSSS_LAYOUTS = {
    # LUAD-HistoSeg / WSSS4LUAD: 3 classes (+ background 3), "-[1, 0, 1]" names, val/ with
    # background-mask/; BCSS-WSSS: 4 classes (+ background 4), "+0[1101]" names, no bg masks.
    "luad": {"classes": 3, "train": "training", "val": "val", "background_masks": True},
    "bcss": {"classes": 4, "train": "train", "val": "val", "background_masks": False},
}


def tissue_picture(codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 picture of a code map: each class its colour, background white."""
    table = np.full((256, 3), 250.0)
    table[: len(TISSUE_COLOURS)] = TISSUE_COLOURS
    image = table[codes] + rng.normal(0, 5, (*codes.shape, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def tissue_codes(
    size: int, present: list[int], background: int, rng: np.random.Generator
) -> np.ndarray:
    """(size, size) uint8 codes: vertical bands of the ``present`` classes, a background
    corner."""
    codes = np.empty((size, size), np.uint8)
    bands = np.array_split(np.arange(size), len(present))
    for code, columns in zip(rng.permutation(present), bands, strict=True):
        codes[:, columns] = code
    codes[: size // 4, : size // 4] = background
    return codes


def write_palette_png(path: Path, codes: np.ndarray, colours: list[tuple[int, int, int]]) -> None:
    """A P-mode PNG of codes, as the WSSS masks are."""
    image = Image.fromarray(codes)
    image.putpalette([v for colour in colours for v in colour])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@pytest.fixture
def make_wsss_root() -> Callable[..., Path]:
    """Factory writing a WSSS root in an official layout: ``make(root, layout="luad",
    n_train=4, n_val=3, n_test=2, size=48, seed=0)``. ``layout`` is ``"luad"``
    (LUAD-HistoSeg / WSSS4LUAD) or ``"bcss"`` (BCSS-WSSS); see :data:`WSSS_LAYOUTS`. Training
    images carry their image-level labels in the name; val/test have ``img/`` and ``mask/``
    (and ``background-mask/`` for luad). Returns ``root``."""

    def make(
        root: Path,
        layout: str = "luad",
        n_train: int = 4,
        n_val: int = 3,
        n_test: int = 2,
        size: int = 48,
        seed: int = 0,
    ) -> Path:
        spec = WSSS_LAYOUTS[layout]
        classes = int(spec["classes"])
        background = classes
        colours = [*TISSUE_COLOURS[:classes], (255, 255, 255)]
        rng = np.random.default_rng(seed)
        (root / str(spec["train"])).mkdir(parents=True, exist_ok=True)
        for index in range(n_train):
            present = sorted(rng.choice(classes, size=1 + index % 2, replace=False).tolist())
            codes = tissue_codes(size, present, background, rng)
            label = [int(c in present) for c in range(classes)]
            if layout == "luad":
                name = f"{100 + index}-{7 * index}-{9 * index}-[{', '.join(map(str, label))}].png"
            else:
                bits = "".join(map(str, label))
                name = f"TCGA-A1-A0SK-DX1_xmin{index}_ymin5_MPP-0.2500+{index}[{bits}].png"
            Image.fromarray(tissue_picture(codes, rng)).save(root / str(spec["train"]) / name)
        for split, count in ((str(spec["val"]), n_val), ("test", n_test)):
            for index in range(count):
                present = sorted(rng.choice(classes, size=2, replace=False).tolist())
                codes = tissue_codes(size, present, background, rng)
                stem = f"{index:02d}"
                (root / split / "img").mkdir(parents=True, exist_ok=True)
                Image.fromarray(tissue_picture(codes, rng)).save(
                    root / split / "img" / f"{stem}.png"
                )
                write_palette_png(root / split / "mask" / f"{stem}.png", codes, colours)
                if spec["background_masks"]:
                    flags = (codes == background).astype(np.uint8)
                    path = root / split / "background-mask" / f"{stem}.png"
                    write_palette_png(path, flags, [(0, 0, 0), (255, 255, 255)])
        return root

    return make
