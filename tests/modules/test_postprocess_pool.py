"""PostprocessPool: results in submission order, bounded queue, errors that surface, and the
same results in worker processes as in this one."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest

from protoseg.metrics.functional import nuclei_scores
from protoseg.modules.postprocess_pool import (
    PostprocessPool,
    auto_workers,
    usable_cores,
)
from protoseg.postprocess import DistanceSplit, split_and_score


def _slow_square(value: int) -> int:
    time.sleep(0.05 * (3 - value % 3))  # later calls finish first
    return value * value


def _fail(value: int) -> int:
    raise RuntimeError(f"broken image {value}")


def _discs_probs(size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities of two touching discs, and their true instance map."""
    yy, xx = np.mgrid[:size, :size]
    left = (yy - 24) ** 2 + (xx - 16) ** 2 < 81
    right = ((yy - 24) ** 2 + (xx - 32) ** 2 < 81) & ~left
    probs = np.zeros((3, size, size), np.float32)
    probs[0] = 1.0
    probs[0][left | right], probs[1][left | right] = 0.1, 0.9
    target = left.astype(np.int32) + 2 * right.astype(np.int32)
    return probs, target


def test_workers_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        PostprocessPool(-1)
    with pytest.raises(ValueError, match="'all'"):
        PostprocessPool("all")  # type: ignore[arg-type]


def _machine(monkeypatch: pytest.MonkeyPatch, cores: int, **slurm: str) -> None:
    """This process may use ``cores`` cores of a 64-core node, with SLURM's variables."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    for name in ("SLURM_CPUS_PER_TASK", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)


def test_auto_takes_half_the_cores_and_at_least_two(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [auto_workers(n) for n in (1, 2, 3, 4, 16, 64)] == [0, 2, 2, 2, 8, 32]
    _machine(monkeypatch, cores=16)
    assert auto_workers() == 8 and PostprocessPool("auto").workers == 8
    _machine(monkeypatch, cores=1)
    assert PostprocessPool("auto").workers == 0


def test_usable_cores_are_the_affinity_masks_not_the_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _machine(monkeypatch, cores=16)
    assert usable_cores() == 16  # taskset / cpuset: 16 of the node's 64
    # four DDP ranks started on this machine by Lightning or torchrun share them
    assert usable_cores(4) == 4 and usable_cores(32) == 1
    with pytest.raises(ValueError, match=">= 1"):
        usable_cores(0)


def test_usable_cores_under_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    # protoseg slurm's layout: one srun task per GPU, each with its own --cpus-per-task
    _machine(monkeypatch, cores=64, SLURM_CPUS_PER_TASK="8", SLURM_NTASKS_PER_NODE="4")
    assert usable_cores(4) == 8
    # one task whose 8 cores Lightning's launcher shares among 4 ranks
    _machine(monkeypatch, cores=64, SLURM_CPUS_PER_TASK="8")
    assert usable_cores(4) == 2 and usable_cores() == 8
    # SLURM's figure never exceeds what the affinity mask allows
    _machine(monkeypatch, cores=4, SLURM_CPUS_PER_TASK="8")
    assert usable_cores() == 4


def test_auto_pool_shares_the_node_among_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, cores=64)
    pool = PostprocessPool("auto")
    assert pool.workers == 32
    pool.share(8)  # 8 DDP ranks, each with a pool: 8 x 4 workers, not 8 x 32
    assert pool.workers == 4
    assert PostprocessPool(3, processes=8).workers == 3, "an explicit count is kept"
    with pytest.raises(ValueError, match=">= 1"):
        pool.share(0)


def test_in_process_pool_runs_each_call_at_once() -> None:
    pool = PostprocessPool(0)
    pool.submit(_slow_square, 3, tag="a")
    assert pool.ready() == [("a", 9)]
    pool.submit(_slow_square, 4)
    assert pool.drain() == [(None, 16)] and pool.drain() == []


def test_worker_results_come_back_in_submission_order() -> None:
    pool = PostprocessPool(2)
    try:
        for value in range(6):
            pool.submit(_slow_square, value, tag=f"image {value}")
            # never more than 2 * workers calls waiting or running
            assert sum(not f.done() for _, f in pool._pending) <= 4
        ready = pool.ready()
        expected = [(f"image {v}", v * v) for v in range(6)]
        assert ready + pool.drain() == expected
        pool.submit(_fail, 8)
        with pytest.raises(RuntimeError, match="broken image 8"):
            pool.drain()
    finally:
        pool.close()
    # a closed pool starts new workers when used again
    pool.submit(_slow_square, 2)
    assert pool.drain() == [(None, 4)]
    pool.close()


def test_split_and_score_is_the_same_in_a_worker() -> None:
    probs, target = _discs_probs()
    split = DistanceSplit(foreground_threshold=[0.5, 0.7]).detached()
    assert pickle.loads(pickle.dumps(split)).thresholds == (0.5, 0.7)
    here_instances, here_scores = split_and_score(split, probs, None, target)
    assert here_instances.max() == 2, "the distance split parts the touching discs"
    assert here_scores == nuclei_scores(here_instances, target)
    pool = PostprocessPool(1)
    try:
        pool.submit(split_and_score, split, probs, None, target)
        ((_, (instances, scores)),) = pool.drain()
    finally:
        pool.close()
    np.testing.assert_array_equal(instances, here_instances)
    assert scores == here_scores
    assert split_and_score(split, probs, None, None)[1] is None
