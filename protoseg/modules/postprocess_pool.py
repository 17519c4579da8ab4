"""``PostprocessPool``: CPU post-processing of whole images in worker processes.

On a GPU the head's forward pass of a 1000 px MoNuSeg image takes milliseconds and its
instance split seconds, single-threaded in good part (scikit-image's convex hulls hold the
GIL), so an evaluation waits on one CPU core while the others idle. The pool runs each
image's split (and scoring) in its own process while the network goes on to the next batch.
Results come back in submission order, so the metrics are those of an in-process run to the
last bit.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from typing import Any, Literal

Workers = int | Literal["auto"]
"""A worker count, or ``"auto"`` (:func:`auto_workers`)."""


def usable_cores(processes: int = 1) -> int:
    """The CPU cores each of the ``processes`` processes of this job on this node may use.

    The cores of this process's affinity mask (what ``taskset``, a cgroup cpuset or a
    container leaves it, not the node's count) are shared among the node's ``processes``,
    e.g. the DDP ranks that Lightning or ``torchrun`` starts on one machine. Under SLURM with
    ``--cpus-per-task`` each task has that many, shared only by the ranks a task starts
    itself: none when ``srun`` starts one task per GPU (``--ntasks-per-node`` = GPUs, as
    ``protoseg slurm`` writes it). At least 1.
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if per_task.isdigit() and int(per_task) > 0:
        cores = min(cores, int(per_task))
        tasks = os.environ.get("SLURM_NTASKS_PER_NODE", "")
        processes = max(1, processes // (int(tasks) if tasks.isdigit() and int(tasks) else 1))
    return max(1, cores // processes)


def auto_workers(cores: int | None = None) -> int:
    """Half of ``cores`` (default: :func:`usable_cores` of one process), at least 2, and 0
    (this process) on a single core: on 2 cores one worker is slower than this process's
    threads and two are faster; on a GPU machine's 16 cores 8 split as fast as 15
    (``make bench-postprocess``)."""
    cores = usable_cores() if cores is None else cores
    return 0 if cores < 2 else max(2, cores // 2)


def _limit_threads(threads: int) -> None:
    """Worker initializer: share the machine's cores between the workers."""
    import torch

    torch.set_num_threads(threads)


class PostprocessPool:
    """Runs functions of whole images in ``workers`` processes; 0 runs them at once in this
    process (no pool, no pickling); ``"auto"`` takes :func:`auto_workers` of the cores this
    process may use, shared among the node's ``processes`` (:func:`usable_cores`; set it
    with :meth:`share` once the trainer knows its DDP ranks).

    At most ``2 * workers`` calls wait or run at a time: :meth:`submit` blocks on the oldest
    beyond that, so a fast network cannot pile up arrays in memory. Workers are started with
    ``spawn`` (safe after CUDA is initialised) on the first :meth:`submit`, and share this
    process's cores in torch threads (at least 1 each).

    Example:
        >>> pool = PostprocessPool(workers=8)
        >>> pool.submit(split_and_score, split, probs, maps, target, tag=stem)
        >>> for stem, (instances, scores) in pool.drain():
        ...     metrics.update(scores=[scores])
        >>> pool.close()
    """

    def __init__(self, workers: Workers = 0, processes: int = 1) -> None:
        if workers != "auto" and (not isinstance(workers, int) or workers < 0):
            raise ValueError(f"postprocess workers must be an int >= 0 or 'auto', got {workers!r}")
        self.requested = workers
        self.share(processes)
        self._executor: ProcessPoolExecutor | None = None
        self._running = 0
        self._pending: deque[tuple[Any, Future]] = deque()

    def share(self, processes: int) -> None:
        """Shares the node's cores among ``processes`` processes (DDP ranks on one node),
        each with a pool like this one; takes effect when the workers next start."""
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.processes = processes

    @property
    def workers(self) -> int:
        """The running workers' count; before they start, as asked, or what ``"auto"``
        gives on this machine now."""
        if self._executor is not None:
            return self._running
        if self.requested == "auto":
            return auto_workers(usable_cores(self.processes))
        return self.requested

    def submit(self, function: Callable[..., Any], *args: Any, tag: Any = None) -> None:
        """Queues ``function(*args)``; ``(tag, result)`` comes out of :meth:`ready` or
        :meth:`drain` (``tag`` stays in this process: what the caller needs with the result)."""
        workers = self.workers
        if workers == 0:
            future: Future = Future()
            future.set_result(function(*args))
        else:
            while sum(not f.done() for _, f in self._pending) >= 2 * workers:
                running = [f for _, f in self._pending if not f.done()]
                wait(running, return_when="FIRST_COMPLETED")
            future = self._started(workers).submit(function, *args)
        self._pending.append((tag, future))

    def _started(self, workers: int) -> ProcessPoolExecutor:
        if self._executor is None:
            threads = max(1, usable_cores(self.processes) // workers)
            self._executor = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_limit_threads,
                initargs=(threads,),
            )
            self._running = workers
        return self._executor

    def ready(self) -> list[tuple[Any, Any]]:
        """``(tag, result)`` of the calls at the front of the queue that are finished, in
        submission order."""
        results = []
        while self._pending and self._pending[0][1].done():
            tag, future = self._pending.popleft()
            results.append((tag, future.result()))
        return results

    def drain(self) -> list[tuple[Any, Any]]:
        """``(tag, result)`` of every queued call, in submission order, waiting for those
        still running."""
        results = [(tag, future.result()) for tag, future in self._pending]
        self._pending.clear()
        return results

    def close(self) -> None:
        """Stops the workers (after the queued calls); a later :meth:`submit` starts new ones."""
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
