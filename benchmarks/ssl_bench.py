"""SSL benchmark: training throughput against lightly, and linear-probe Dice after a budget.

1. **Throughput** (images/s; a step = augmentation, forward, backward, optimizer) of SimCLR,
   MoCo v2, BYOL and DINO with ResNet-18 at 224 px: ours (the modules of
   ``configs/ssl/<method>_monuseg.yaml``, views made on the device) and lightly's
   implementation (:mod:`benchmarks.ssl_lightly`: its transforms in the DataLoader, heads,
   losses), side by side in one process: same backbone, tiles, batch size, DataLoader
   workers, torch threads, AdamW, warm-up and timed steps. Ratio = ours / lightly.
2. **Probe**: each method trains ``--probe-steps`` steps from the same seed on MoNuSeg
   training images, then :class:`~protoseg.callbacks.linear_probe.LinearProbeCallback`
   scores its encoder (dense linear probe, pooled held-out Dice); the random-init encoder
   gets the same probe. SSL trains only on images the probe does not use (a folder of links).

    python benchmarks/ssl_bench.py --output benchmarks/results/ssl.json  # CPU, ~20 min
    python benchmarks/ssl_bench.py --device cuda --output benchmarks/results/ssl_gpu.json
    python benchmarks/ssl_bench.py --methods simclr --steps 1 --warmup 1 --skip-probe  # smoke
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset, RandomSampler  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from protoseg.callbacks.linear_probe import LinearProbeCallback  # noqa: E402
from protoseg.cli import build_cli  # noqa: E402
from protoseg.datamodules.tiles import find_images, random_crop  # noqa: E402
from protoseg.io.images import read_rgb  # noqa: E402

METHODS = ("simclr", "moco", "byol", "dino")
DINO_LOCAL_RATIO = 96 / 224  # local / global crop side of configs/ssl/dino_monuseg.yaml


def load_tiles(image_root: str | Path | None, count: int, size: int, seed: int = 0) -> np.ndarray:
    """(count, size, size, 3) uint8 random crops of the images under ``image_root``
    (random noise when None: a smoke test without data)."""
    rng = np.random.default_rng(seed)
    if image_root is None:
        return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    images = [read_rgb(path) for path in find_images(image_root)]
    picks = rng.integers(len(images), size=count)
    return np.stack([random_crop(images[i], size, rng) for i in picks])


class TileDataset(Dataset):
    """Tiles as (3, S, S) uint8 tensors (ours) or as ``transform(PIL image)`` (lightly)."""

    def __init__(self, tiles: np.ndarray, transform: Callable | None = None) -> None:
        self.tiles, self.transform = tiles, transform

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> Any:
        tile = self.tiles[index]
        if self.transform is None:
            return torch.from_numpy(np.ascontiguousarray(tile.transpose(2, 0, 1)))
        return self.transform(Image.fromarray(tile))


def tile_loader(dataset: TileDataset, batch_size: int, batches: int, workers: int) -> DataLoader:
    """``batches`` batches drawn with replacement (seeded), the same for both implementations."""
    sampler = RandomSampler(
        dataset,
        replacement=True,
        num_samples=batch_size * batches,
        generator=torch.Generator().manual_seed(0),
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
    )


def size_overrides(method: str, size: int) -> list[str]:
    """CLI overrides setting the view size(s) of ``method``'s augmentation."""
    prefix = "--model.init_args.augment.init_args"
    if method == "dino":
        local = max(16, round(size * DINO_LOCAL_RATIO))
        return [f"{prefix}.global_size={size}", f"{prefix}.local_size={local}"]
    return [f"{prefix}.size={size}"]


def our_module(
    method: str,
    size: int,
    backbone: str = "resnet18",
    extra: Iterable[str] = (),
    keep_cli: bool = False,
) -> Any:
    """The LightningModule of ``configs/ssl/<method>_monuseg.yaml`` with views of ``size`` px
    (with ``keep_cli``, the whole CLI: ``model``, ``datamodule`` and ``trainer``)."""
    cli = build_cli(
        [
            f"--config={ROOT / 'configs' / 'ssl' / f'{method}_monuseg.yaml'}",
            f"--model.init_args.backbone.init_args.name={backbone}",
            *size_overrides(method, size),
            *extra,
        ],
        run=False,
    )
    return cli if keep_cli else cli.model


def our_step(
    module: L.LightningModule, device: torch.device, lr: float, bf16: bool = False
) -> Callable:
    """A training step ``uint8 tiles (B, 3, S, S) -> None`` of one of our SSL modules; with
    ``bf16``, views, forward and loss under bf16 autocast (Lightning's ``bf16-mixed``)."""
    module.to(device).train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)

    def step(tiles: torch.Tensor) -> None:
        images = tiles.to(device, non_blocking=True).float().div_(255.0)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            batch = module.on_after_batch_transfer({"image": images}, 0)
            loss = module.training_step(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        module.on_after_backward()
        optimizer.step()

    return step


def measure(step: Callable, loader: DataLoader, warmup: int, steps: int, device: torch.device):
    """Runs ``warmup`` then ``steps`` steps on the loader's batches; times the latter
    (batch loading included). Returns ``{"images_per_s", "seconds_per_step"}``."""
    batches = iter(loader)
    batch_size = loader.batch_size or 1

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step(next(batches))
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    sync()
    seconds = time.perf_counter() - start
    return {
        "images_per_s": round(batch_size * steps / seconds, 2),
        "seconds_per_step": round(seconds / steps, 4),
    }


def throughput(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Ours and lightly's images/s per method (section 1 of the module docstring)."""
    from benchmarks.ssl_lightly import lightly_step, lightly_transform

    tiles = load_tiles(args.image_root, args.pool, args.tile_size)
    lr = 1e-3 * args.batch_size / 256
    batches = args.warmup + args.steps
    bf16 = args.precision == "bf16"
    results: dict[str, Any] = {}
    for method in args.methods:
        torch.manual_seed(0)
        module = our_module(method, args.size, args.backbone)
        ours_loader = tile_loader(TileDataset(tiles), args.batch_size, batches, args.workers)
        step = our_step(module, device, lr, bf16)
        ours = measure(step, ours_loader, args.warmup, args.steps, device)
        backbone = type(module.backbone)(args.backbone)
        del module
        local = max(16, round(args.size * DINO_LOCAL_RATIO))
        transform = lightly_transform(method, args.size, local, num_local=4)
        loader = tile_loader(TileDataset(tiles, transform), args.batch_size, batches, args.workers)
        step = lightly_step(method, backbone, device, lr, total_steps=batches, bf16=bf16)
        theirs = measure(step, loader, args.warmup, args.steps, device)
        ratio = round(ours["images_per_s"] / theirs["images_per_s"], 3)
        results[method] = {"ours": ours, "lightly": theirs, "ratio_ours_over_lightly": ratio}
        print(
            f"throughput {method}: ours {ours['images_per_s']} img/s, lightly "
            f"{theirs['images_per_s']} img/s, ratio {ratio}",
            flush=True,
        )
    return results


def ssl_image_folder(image_root: Path, exclude: list[Path], folder: Path) -> Path:
    """A folder of links to the images under ``image_root`` except ``exclude``."""
    folder.mkdir(parents=True, exist_ok=True)
    excluded = {p.resolve() for p in exclude}
    for path in find_images(image_root):
        if path.resolve() not in excluded:
            (folder / path.name).symlink_to(path.resolve())
    return folder


def budget_overrides(method: str, steps: int, batch_size: int) -> list[str]:
    """The configs' schedules (written for 2000 steps) scaled to a ``steps`` budget: LR
    warm-up 5%; DINO's frozen last layer 5% and teacher-temperature warm-up 15%; MoCo's
    queue 64 batches, so that it holds real keys early."""
    prefix = "--model.init_args"
    overrides = [f"{prefix}.warmup_steps={max(steps // 20, 1)}"]
    if method == "dino":
        overrides += [
            f"{prefix}.freeze_last_layer_steps={steps // 20}",
            f"{prefix}.teacher_temp_warmup_steps={max(steps * 3 // 20, 1)}",
        ]
    if method == "moco":
        overrides.append(f"{prefix}.queue_size={min(8192, 64 * batch_size)}")
    return overrides


def probe(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Probe Dice of each method after the step budget, and of random init (section 2)."""
    probe_root = Path(args.probe_root)
    reference = LinearProbeCallback(
        str(probe_root),
        args.probe_train_images,
        args.probe_val_images,
        crop_size=args.probe_crop,
    )
    reference.load()
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_ssl_") as tmp:
        images = ssl_image_folder(probe_root / "images", reference.probe_paths, Path(tmp) / "i")
        results["ssl_images"] = len(find_images(images))
        for method in ("random_init", *args.methods):
            # Every method starts from the same weights: the CLI seeds before building.
            name = "simclr" if method == "random_init" else method
            overrides = [
                f"--data.root={images}",
                f"--data.crop_size={args.probe_tile}",
                f"--data.batch_size={args.probe_batch}",
                f"--data.num_workers={args.workers}",
                f"--data.crops_per_epoch={args.probe_batch * max(args.probe_steps, 1)}",
                f"--trainer.max_steps={args.probe_steps}",
                f"--trainer.accelerator={accelerator}",
                "--trainer.logger=false",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false",
                "--trainer.enable_checkpointing=false",
                "--trainer.callbacks=[]",
                f"--trainer.default_root_dir={tmp}",
                *budget_overrides(name, args.probe_steps, args.probe_batch),
            ]
            start = time.perf_counter()
            cli = our_module(name, args.probe_size, args.backbone, overrides, keep_cli=True)
            if method == "random_init":
                scores = reference.run_probe(cli.model.to(device))
            else:
                callback = LinearProbeCallback(
                    str(probe_root),
                    args.probe_train_images,
                    args.probe_val_images,
                    crop_size=args.probe_crop,
                )
                # The images are read once, for every method.
                callback.train_pairs = reference.train_pairs
                callback.val_pairs = reference.val_pairs
                callback.probe_paths = reference.probe_paths
                cli.trainer.callbacks.append(callback)
                cli.trainer.fit(cli.model, datamodule=cli.datamodule)
                scores = dict(callback.history[-1])
            results[method] = {
                "dice": round(scores["dice"], 4),
                "train_dice": round(scores["train_dice"], 4),
                "probe_seconds": round(scores["seconds"], 1),
                "total_seconds": round(time.perf_counter() - start, 1),
            }
            print(f"probe {method}: {results[method]}", flush=True)
    for method in args.methods:
        results[method]["above_random_init"] = (
            results[method]["dice"] > results["random_init"]["dice"]
        )
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/results/ssl.json")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers, both implementations (default: 0 on CPU, min(8, cores) on CUDA)",
    )
    group = parser.add_argument_group("throughput")
    group.add_argument("--skip-throughput", action="store_true")
    group.add_argument(
        "--image-root",
        default="../shared/data/monuseg/train/images",
        help="tiles are cut from these images; 'none': random noise",
    )
    group.add_argument("--size", type=int, default=224, help="view side, px")
    group.add_argument("--tile-size", type=int, default=224, help="input tile side, px")
    group.add_argument("--pool", type=int, default=64, help="distinct tiles")
    group.add_argument("--batch-size", type=int, default=None, help="default 16 CPU, 128 CUDA")
    group.add_argument("--warmup", type=int, default=None, help="default 3 CPU, 10 CUDA")
    group.add_argument("--steps", type=int, default=None, help="timed steps: 10 CPU, 30 CUDA")
    group.add_argument(
        "--precision",
        choices=["32", "bf16"],
        default="32",
        help="both implementations: float32, or forward and loss under bf16 autocast",
    )
    group = parser.add_argument_group("probe")
    group.add_argument("--skip-probe", action="store_true")
    group.add_argument("--probe-root", default="../shared/data/monuseg/train")
    group.add_argument("--probe-steps", type=int, default=150, help="SSL steps per method")
    group.add_argument("--probe-batch", type=int, default=16)
    group.add_argument("--probe-size", type=int, default=112, help="SSL view side, px")
    group.add_argument("--probe-tile", type=int, default=160, help="SSL input tile side, px")
    group.add_argument("--probe-train-images", type=int, default=4)
    group.add_argument("--probe-val-images", type=int, default=4)
    group.add_argument("--probe-crop", type=int, default=512, help="probe image centre crop")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.workers is None:
        args.workers = min(8, os.cpu_count() or 1) if cuda else 0
    args.batch_size = args.batch_size or (128 if cuda else 16)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 3)
    args.steps = args.steps or (30 if cuda else 10)
    if args.image_root == "none":
        args.image_root = None
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    figures: dict[str, Any] = {
        "benchmark": "ssl",
        "backbone": args.backbone,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "dataloader_workers": args.workers,
    }
    if not args.skip_throughput:
        figures["throughput_settings"] = {
            "view_size": args.size,
            "tile_size": args.tile_size,
            "batch_size": args.batch_size,
            "warmup_steps": args.warmup,
            "precision": args.precision,
            "timed_steps": args.steps,
            "distinct_tiles": args.pool,
            "tiles_from": args.image_root or "random noise",
            "optimizer": "AdamW",
            "dino_views": "2 global + 4 local",
            "lightly": _lightly_version(),
            "note": "same timm backbone for both; lightly's transforms run per image in the "
            "DataLoader, ours batched on the device after it; ours also applies HED jitter "
            "and feeds channels-last views to the backbone",
        }
        figures["throughput"] = throughput(args, device)
    if not args.skip_probe:
        figures["probe_settings"] = {
            "ssl_steps": args.probe_steps,
            "ssl_batch_size": args.probe_batch,
            "ssl_view_size": args.probe_size,
            "ssl_tile_size": args.probe_tile,
            "probe_train_images": args.probe_train_images,
            "probe_val_images": args.probe_val_images,
            "probe_crop": args.probe_crop,
            "probe": "frozen stages 1-3, stride-8 grid, BN + 1x1 conv, L-BFGS 100 iterations, "
            "pooled pixel Dice on held-out images; SSL never sees the probe's images",
            "seed": 0,
            "schedules": "configs/ssl/*.yaml scaled to the budget: LR warm-up 5%, DINO "
            "last-layer freeze 5% and teacher-temperature warm-up 15%, MoCo queue 64 batches",
        }
        figures["probe"] = probe(args, device)
    path = write_result(args.output, figures)
    print(f"wrote {path}")


def _lightly_version() -> str | None:
    try:
        import lightly
    except ImportError:
        return None
    return lightly.__version__


if __name__ == "__main__":
    main()
