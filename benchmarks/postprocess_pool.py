"""Throughput of the head's post-processing in this process against a PostprocessPool.

Splits and scores the saved split inputs of a trained head ``--repeats`` times in this
process, then in pools of each ``--workers`` count (worker start included), checks that every
instance map and score is the same, and writes the wall times. With ``--checkpoint`` the
inputs of the head's first ``--images`` validation images are first saved into
``--inputs`` (``*.npz``: uint8 ``probs`` (3, H, W) and ``maps`` (C, H, W) with each channel's
``*_low`` / ``*_high`` range, and the true ``target`` instance map; the head's
``postprocess`` config in ``split.json``), so that they can be
carried to another machine (a GPU machine's 16 cores) without the network.

    python benchmarks/postprocess_pool.py --inputs runs/split_inputs --workers 1 2 \
        --checkpoint runs/bench_psm/segment/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from protoseg.io.images import write_bytes_atomic, write_text_atomic  # noqa: E402
from protoseg.modules.postprocess_pool import PostprocessPool  # noqa: E402
from protoseg.postprocess import InstanceSplit, split_and_score  # noqa: E402
from protoseg.postprocess.centre_guided import build_network  # noqa: E402

SPLIT_FILE = "split.json"
"""The head's post-processing settings, saved beside its inputs so that the timed split is its."""


def quantize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(C, H, W) floats as uint8 over each channel's range, with the ranges' ends."""
    low = values.min(axis=(1, 2), keepdims=True)
    high = np.maximum(values.max(axis=(1, 2), keepdims=True), low + 1e-6)
    return np.round((values - low) / (high - low) * 255).astype(np.uint8), low, high


def dequantize(codes: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """:func:`quantize`'s input back as float32, to half a step of 1/255 of each range."""
    return (codes.astype(np.float32) / 255 * (high - low) + low).astype(np.float32)


def save_inputs(args: argparse.Namespace, folder: Path) -> None:
    """The split inputs of the first ``args.images`` validation images of the head's own
    datamodule (its root replaced by ``args.data_root``), from the head of
    ``args.checkpoint``, into ``folder``."""
    import torch

    from protoseg.datamodules.monuseg import MoNuSegDataModule
    from protoseg.lightning_modules.segmentation import SegmentationModule

    model = SegmentationModule.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    data = MoNuSegDataModule.load_from_checkpoint(args.checkpoint, root=args.data_root)
    data.setup("validate")
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / SPLIT_FILE, json.dumps(model.hparams["postprocess"]))
    for index, batch in enumerate(data.val_dataloader()):
        if index == args.images:
            break
        with torch.no_grad():
            ((probs, maps),) = model.split_inputs(batch["image"])
        arrays = {"target": batch["instances"][0].numpy().astype(np.int32)}
        for name, values in (("probs", probs), ("maps", maps)):
            arrays[name], arrays[f"{name}_low"], arrays[f"{name}_high"] = quantize(values)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        write_bytes_atomic(folder / f"{index:02d}_{batch['stem'][0]}.npz", buffer.getvalue())
        print(f"saved the split inputs of {batch['stem'][0]}", flush=True)


def load_split(folder: Path) -> InstanceSplit:
    """The head's post-processing saved with the inputs in ``folder`` (its ``class_path``
    config), without its networks: the saved inputs hold what they saw."""
    path = folder / SPLIT_FILE
    try:
        return build_network(json.loads(path.read_text())).detached()
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{path}: not the split settings of saved inputs: {error}") from error


def load_inputs(folder: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(probs, maps, target) of every ``*.npz`` in ``folder``, back in float32."""
    inputs = []
    for path in sorted(folder.glob("*.npz")):
        try:
            with np.load(path) as saved:
                probs, maps = (
                    dequantize(saved[name], saved[f"{name}_low"], saved[f"{name}_high"])
                    for name in ("probs", "maps")
                )
                inputs.append((probs, maps, saved["target"]))
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{path}: not saved split inputs: {error}") from error
    if not inputs:
        raise FileNotFoundError(f"{folder}: no split inputs (*.npz)")
    return inputs


def run(pool: PostprocessPool, split: InstanceSplit, jobs: list[tuple]) -> tuple[list[Any], float]:
    """Every job split by ``split`` through ``pool`` (submit, then drain) and the wall
    seconds."""
    start = time.perf_counter()
    for probs, maps, target in jobs:
        pool.submit(split_and_score, split, probs, maps, target)
    results = [result for _, result in pool.drain()]
    pool.close()
    return results, round(time.perf_counter() - start, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--output", default="benchmarks/results/postprocess_pool.json")
    parser.add_argument("--checkpoint", help="save the inputs from this head first")
    parser.add_argument("--data-root", default="../shared/data/monuseg/train")
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    if args.checkpoint is not None:
        save_inputs(args, Path(args.inputs))
    split = load_split(Path(args.inputs))
    jobs = load_inputs(Path(args.inputs)) * args.repeats
    reference, serial = run(PostprocessPool(0), split, jobs)
    print(f"in this process: {len(jobs)} images in {serial} s", flush=True)
    pools = {}
    for workers in args.workers:
        results, seconds = run(PostprocessPool(workers), split, jobs)
        same = all(
            np.array_equal(a[0], b[0]) and a[1] == b[1]
            for a, b in zip(results, reference, strict=True)
        )
        pools[str(workers)] = {
            "seconds": seconds,
            "speedup": round(serial / seconds, 2),
            "same": same,
        }
        print(f"{workers} workers: {seconds} s (x{serial / seconds:.2f}), same results: {same}")
    path = write_result(
        args.output,
        {
            "benchmark": "postprocess_pool",
            "images": len(jobs),
            "distinct_images": len(jobs) // args.repeats,
            "split": json.loads((Path(args.inputs) / SPLIT_FILE).read_text()),
            "in_process_seconds": serial,
            "pools": pools,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
