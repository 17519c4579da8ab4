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


def auto_workers(cpu_count: int | None = None) -> int:
    """Half the machine's cores, at least 2, and 0 (this process) on a single core: on 2
    cores one worker is slower than this process's threads and two are faster; on a GPU
    machine's 16 cores 8 split as fast as 15 (``make bench-postprocess``)."""
    cores = (os.cpu_count() or 1) if cpu_count is None else cpu_count
    return 0 if cores < 2 else max(2, cores // 2)


def _limit_threads(threads: int) -> None:
    """Worker initializer: share the machine's cores between the workers."""
    import torch

    torch.set_num_threads(threads)


class PostprocessPool:
    """Runs functions of whole images in ``workers`` processes; 0 runs them at once in this
    process (no pool, no pickling); ``"auto"`` takes :func:`auto_workers`.

    At most ``2 * workers`` calls wait or run at a time: :meth:`submit` blocks on the oldest
    beyond that, so a fast network cannot pile up arrays in memory. Workers are started with
    ``spawn`` (safe after CUDA is initialised) on the first :meth:`submit`, and each gets
    ``cpu_count // workers`` torch threads (at least 1).

    Example:
        >>> pool = PostprocessPool(workers=8)
        >>> pool.submit(split_and_score, split, probs, maps, target, tag=stem)
        >>> for stem, (instances, scores) in pool.drain():
        ...     metrics.update(scores=[scores])
        >>> pool.close()
    """

    def __init__(self, workers: Workers = 0) -> None:
        if workers == "auto":
            workers = auto_workers()
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"postprocess workers must be an int >= 0 or 'auto', got {workers!r}")
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._pending: deque[tuple[Any, Future]] = deque()

    def submit(self, function: Callable[..., Any], *args: Any, tag: Any = None) -> None:
        """Queues ``function(*args)``; ``(tag, result)`` comes out of :meth:`ready` or
        :meth:`drain` (``tag`` stays in this process: what the caller needs with the result)."""
        if self.workers == 0:
            future: Future = Future()
            future.set_result(function(*args))
        else:
            while sum(not f.done() for _, f in self._pending) >= 2 * self.workers:
                running = [f for _, f in self._pending if not f.done()]
                wait(running, return_when="FIRST_COMPLETED")
            future = self._started().submit(function, *args)
        self._pending.append((tag, future))

    def _started(self) -> ProcessPoolExecutor:
        if self._executor is None:
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            self._executor = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_limit_threads,
                initargs=(threads,),
            )
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
