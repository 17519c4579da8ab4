"""Whole-slide prediction speed and memory: tiles/s and peak RSS per slide size.

Predicts the shared CMU-1-Small-Region.svs (2220 x 2967 px) and a synthetic pyramidal TIFF
(default 20k x 20k px, written tile by tile, never whole in memory) with a randomly
initialised U-Net (resnet18) segmentation head, through the same datamodule and writer as
``protoseg predict``. Each slide runs in a fresh child process, so that its peak memory is
its own: ``peak_rss_mib`` is the child's ``ru_maxrss`` (main process: model, batches,
stitching, preview) taken when ``trainer.predict`` returns, and ``worker_peak_rss_mib`` the
largest of its DataLoader workers' (``RUSAGE_CHILDREN``, tile reading). Bounded memory shows
as equal peaks for both slides, and as a flat ``peak_rss_trace`` (the main process's peak
after so many tiles) once the first batches have warmed the allocator and oneDNN.
``tiles_per_s`` counts tiles predicted over the wall time of ``trainer.predict`` (tissue
detection, reading, inference, post-processing and writing included).

    python benchmarks/wsi.py [--device cuda] [--size 20000] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tifffile  # noqa: E402

from benchmarks.common import write_result  # noqa: E402

TILE = 256  # TIFF tile side, px
PINK, PURPLE, WHITE = (230, 150, 190), (95, 60, 140), (255, 255, 255)
CELL, RADIUS = 40, 8  # nucleus lattice pitch and radius, level-0 px


def synthetic_tile(x0: int, y0: int, height: int, width: int, scale: int, size: int) -> np.ndarray:
    """(height, width, 3) uint8 of the synthetic slide at ``scale`` level-0 px per px.

    A tissue ellipse over the middle of a ``size`` px square, with nuclei on a jittered
    lattice; a pure function of level-0 coordinates, so every level and tile is computed
    independently (sampled at pixel centres).
    """
    xs = (x0 + np.arange(width) + 0.5) * scale
    ys = (y0 + np.arange(height) + 0.5) * scale
    x, y = np.meshgrid(xs, ys)
    tissue = ((x - size / 2) / (0.42 * size)) ** 2 + ((y - size / 2) / (0.35 * size)) ** 2 < 1
    col, row = np.floor(x / CELL), np.floor(y / CELL)
    # A cheap integer hash of the cell jitters each nucleus inside it.
    hashed = (col * 73856093 + row * 19349663).astype(np.int64) % 1000
    cx = (col + 0.25 + 0.5 * (hashed % 10) / 10) * CELL
    cy = (row + 0.25 + 0.5 * (hashed // 100) / 10) * CELL
    nucleus = tissue & ((x - cx) ** 2 + (y - cy) ** 2 < RADIUS**2)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = WHITE
    image[tissue] = PINK
    image[nucleus] = PURPLE
    return image


def write_synthetic_pyramid(path: Path, size: int, mpp: float = 0.25) -> Path:
    """Tiled pyramidal TIFF (levels halve down to <= 1024 px), written tile by tile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tifffile.TiffWriter(tmp, bigtiff=True) as writer:
        level, side = 0, size
        while True:
            scale = 2**level

            def tiles(side: int = side, scale: int = scale) -> Iterator[np.ndarray]:
                for y0 in range(0, side, TILE):
                    for x0 in range(0, side, TILE):
                        yield synthetic_tile(x0, y0, TILE, TILE, scale, size)

            writer.write(
                tiles(),
                shape=(side, side, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="zlib",
                compressionargs={"level": 1},
                subfiletype=1 if level else 0,
                resolution=(1e4 / (mpp * scale),) * 2,
                resolutionunit="CENTIMETER",
            )
            if side <= 1024:
                break
            level, side = level + 1, side // 2
    tmp.replace(path)
    return path


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory so far, MiB, of this process (``RUSAGE_SELF``) or of its largest
    waited-for child (``RUSAGE_CHILDREN``); Linux reports KiB."""
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


def predict_slide(args: argparse.Namespace) -> dict[str, float]:
    """Child mode: predicts one slide and returns its figures."""
    import lightning as L
    import torch

    from protoseg.callbacks.slide_writer import SlidePredictionWriter
    from protoseg.datamodules.slide_predict import WSIPredictDataModule
    from protoseg.lightning_modules.segmentation import SegmentationModule
    from protoseg.modules.networks import UNet
    from protoseg.precision import resolve_precision

    class PeakTrace(L.Callback):
        """The peak RSS after each predicted batch: [(tiles so far, MiB), ...]."""

        def __init__(self) -> None:
            self.points: list[tuple[int, float]] = []

        def on_predict_batch_end(self, trainer: L.Trainer, module, outputs, batch, *_) -> None:
            done = (self.points[-1][0] if self.points else 0) + len(batch["image"])
            self.points.append((done, peak_rss_mib()))

    torch.manual_seed(0)
    if args.ckpt is None:
        model = SegmentationModule(UNet("resnet18"), tile_size=args.tile_size)
    else:
        # A trained head finds nuclei, so that stitching and GeoJSON writing are timed too.
        model = SegmentationModule.load_from_checkpoint(args.ckpt, map_location="cpu")
    data = WSIPredictDataModule(
        [args.slide],
        mpp=args.mpp,
        tile_size=args.tile_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    writer, trace = SlidePredictionWriter(args.out), PeakTrace()
    trainer = L.Trainer(
        accelerator=args.device,
        devices=1,
        precision=resolve_precision(args.precision, args.device),
        logger=False,
        enable_checkpointing=False,
        callbacks=[writer, trace],
        limit_predict_batches=args.limit_batches,
    )
    start = time.perf_counter()
    trainer.predict(model, datamodule=data, return_predictions=False)
    seconds = time.perf_counter() - start
    # Before the GeoJSON is read back below: parsing 100k polygons takes its own memory.
    peak = peak_rss_mib()
    step = max(len(trace.points) // 8, 1)
    peak_trace = trace.points[step - 1 :: step]
    if peak_trace[-1:] != trace.points[-1:]:
        peak_trace.append(trace.points[-1])
    grid = data.grids[0]
    tiles = len(grid.tiles)
    if args.limit_batches is not None:
        tiles = min(tiles, args.limit_batches * args.batch_size)
    nuclei = len(json.loads(writer.written[0].read_text())["features"])
    return {
        "level0_size": list(grid.dimensions),
        "tiles": tiles,
        "grid_tiles": grid.grid_shape[0] * grid.grid_shape[1],
        "nuclei": nuclei,
        "seconds": round(seconds, 2),
        "tiles_per_s": round(tiles / seconds, 3),
        "precision": str(trainer.precision),
        "peak_rss_mib": peak,
        "peak_rss_trace": peak_trace,
        "worker_peak_rss_mib": peak_rss_mib(resource.RUSAGE_CHILDREN),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--svs", default="../shared/data/wsi/CMU-1-Small-Region.svs")
    parser.add_argument("--size", type=int, default=20000, help="synthetic slide side, px")
    parser.add_argument("--run-dir", default="runs/bench_wsi")
    parser.add_argument("--output", default="benchmarks/results/wsi.json")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--mpp", type=float, default=0.5, help="prediction µm/px")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--precision", default="bf16-mixed", help="float32 where the CPU lacks native bf16"
    )
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--limit-batches", type=int, default=None, help="smoke runs only")
    parser.add_argument("--ckpt", default=None, help="segmentation head checkpoint (random init)")
    parser.add_argument("--slide", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.slide is not None:
        print("RESULT " + json.dumps(predict_slide(args)), flush=True)
        return

    run_dir = Path(args.run_dir)
    synthetic = run_dir / f"synthetic_{args.size}.tif"
    start = time.perf_counter()
    if not synthetic.is_file():
        write_synthetic_pyramid(synthetic, args.size)
    generated = time.perf_counter() - start
    # Includes the imports (torch); a 20k pyramid written tile by tile adds little to it.
    parent_rss = peak_rss_mib()
    slides = {"cmu_small_region_svs": Path(args.svs), f"synthetic_{args.size}": synthetic}
    figures: dict[str, object] = {}
    for name, slide in slides.items():
        if not slide.is_file():
            print(f"benchmark: {slide} is absent, skipped")
            continue
        command = [sys.executable, __file__, "--slide", str(slide), "--out", str(run_dir / name)]
        for option in (
            "device",
            "mpp",
            "tile_size",
            "overlap",
            "batch_size",
            "num_workers",
            "precision",
        ):
            command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
        if args.limit_batches is not None:
            command += ["--limit-batches", str(args.limit_batches)]
        if args.ckpt is not None:
            command += ["--ckpt", args.ckpt]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"benchmark: {name} failed\n{done.stderr[-3000:]}")
        line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        figures[name] = json.loads(line.removeprefix("RESULT "))
        print(f"benchmark: {name}: {figures[name]}")
    settings = {k: getattr(args, k) for k in ("device", "mpp", "tile_size", "overlap")}
    settings.update(batch_size=args.batch_size, num_workers=args.num_workers)
    model = f"UNet resnet18, {args.ckpt or 'random init'}"
    settings.update(limit_batches=args.limit_batches, model=model)
    out = write_result(
        args.output,
        {
            "settings": settings,
            "synthetic_generation_s": round(generated, 1),
            "generation_peak_rss_mib": parent_rss,
            "slides": figures,
        },
    )
    print(f"benchmark: figures in {out}")


if __name__ == "__main__":
    main()
