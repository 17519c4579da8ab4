"""Throughput of the head's post-processing in this process against a PostprocessPool.

Reads split inputs saved by a trained head (``*.npz`` with uint8 ``probs`` (3, H, W) and
``maps`` (C, H, W), each channel's ``*_low`` / ``*_high`` range, and the true ``target``
instance map), splits and scores each input ``--repeats`` times in this process, then in
pools of each ``--workers`` count (worker start included), checks that every instance map
and score is the same, and writes the wall times.

    python benchmarks/postprocess_pool.py --inputs runs/split_inputs --workers 2 \
        --output benchmarks/results/postprocess_pool.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from protoseg.modules.instance_split import InstanceSplit, split_and_score  # noqa: E402
from protoseg.modules.postprocess_pool import PostprocessPool  # noqa: E402

# configs/psm/segment_monuseg.yaml's post-processing.
PSM_HEAD_SPLIT = InstanceSplit(
    foreground_thresholds=(0.2, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    instance_split="distance",
    min_area=10,
    min_distance=7,
    min_peak_probability=0.99,
    outline_opening=3,
    centre_offset=0.25,
    centre_votes=True,
)


def load_inputs(folder: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(probs, maps, target) of every ``*.npz`` in ``folder``, back in float32."""
    inputs = []
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as saved:
            arrays = [
                saved[name].astype(np.float32)
                / 255
                * (saved[f"{name}_high"] - saved[f"{name}_low"])
                + saved[f"{name}_low"]
                for name in ("probs", "maps")
            ]
            inputs.append(
                (arrays[0].astype(np.float32), arrays[1].astype(np.float32), saved["target"])
            )
    if not inputs:
        raise FileNotFoundError(f"{folder}: no split inputs (*.npz)")
    return inputs


def run(pool: PostprocessPool, jobs: list[tuple]) -> tuple[list[Any], float]:
    """Every job through ``pool`` (submit, then drain) and the wall seconds."""
    start = time.perf_counter()
    for probs, maps, target in jobs:
        pool.submit(split_and_score, PSM_HEAD_SPLIT, probs, maps, target)
    results = pool.drain()
    pool.close()
    return results, round(time.perf_counter() - start, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--output", default="benchmarks/results/postprocess_pool.json")
    args = parser.parse_args()
    jobs = load_inputs(Path(args.inputs)) * args.repeats
    reference, serial = run(PostprocessPool(0), jobs)
    print(f"in this process: {len(jobs)} images in {serial} s", flush=True)
    pools = {}
    for workers in args.workers:
        results, seconds = run(PostprocessPool(workers), jobs)
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
            "split": repr(PSM_HEAD_SPLIT),
            "in_process_seconds": serial,
            "pools": pools,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
