"""Samplers: reproducible epoch seeds for random crops, whole images once per DDP rank, and
batches of whole images that share one size."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import BatchSampler, Dataset, DistributedSampler, Sampler


class SameSizeBatchSampler(BatchSampler):
    """Batches of up to ``batch_size`` of ``sampler``'s indices whose images share one size,
    so that whole images of a folder of mixed sizes can be predicted several to a batch.

    Indices are taken in the sampler's order; each size collects its own batch, which is
    yielded as soon as it is full, and the unfilled ones follow at the end (dropped with
    ``drop_last``). Lightning rebuilds it around its own sampler (a ``DistributedSampler``
    under DDP, so each rank batches its share).

    Args:
        sampler: indices into the dataset.
        batch_size: images per batch at most.
        drop_last: drop each size's last unfilled batch.
        sizes: (height, width) of every dataset item, by index.
    """

    def __init__(
        self,
        sampler: Sampler[int] | Iterable[int],
        batch_size: int,
        drop_last: bool,
        sizes: Sequence[tuple[int, int]],
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.sizes = [tuple(size) for size in sizes]

    def __iter__(self) -> Iterator[list[int]]:
        pending: dict[tuple[int, ...], list[int]] = {}
        for index in self.sampler:
            size = self.sizes[index]
            batch = pending.setdefault(size, [])
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch
                pending[size] = []
        if not self.drop_last:
            yield from (batch for batch in pending.values() if batch)

    def __len__(self) -> int:
        counts = Counter(self.sizes[index] for index in self.sampler)
        if self.drop_last:
            return sum(count // self.batch_size for count in counts.values())
        return sum(math.ceil(count / self.batch_size) for count in counts.values())


class EpochSeedSampler(DistributedSampler):
    """Yields sample seeds, a function of (base_seed, epoch) only, shared among DDP ranks.

    The dataset turns each seed into one random crop, so batches depend neither on the
    number of DataLoader workers nor on which worker loads them, and ``set_epoch`` (called
    by Lightning before each training epoch, also after resuming) gives every epoch new
    crops. Without ``set_epoch`` calls, each iteration moves on to the next epoch.

    Every rank draws the same ``num_samples`` epoch seeds and keeps every
    ``num_replicas``-th one from its ``rank`` on (the last ``num_samples % num_replicas``
    are dropped, so that ranks step together): the shares are disjoint, and step ``k``'s
    batches of all ranks together hold seeds ``k * B * W`` to ``(k + 1) * B * W - 1``, the
    batch a single process with batch size ``B * W`` trains on. Being a
    ``DistributedSampler``, Lightning uses it as it is instead of wrapping it in its own
    (shuffling, padding) distributed sampler. Build it with :func:`epoch_seed_sampler`.

    Args:
        num_samples: seeds per epoch for all ranks together (the epoch length).
        base_seed: e.g. ``torch.initial_seed()``, which ``seed_everything`` sets; the same on
            every rank.
        num_replicas: number of DDP processes.
        rank: this process's global rank.
    """

    def __init__(
        self, num_samples: int, base_seed: int, num_replicas: int = 1, rank: int = 0
    ) -> None:
        if num_samples < num_replicas:
            raise ValueError(f"{num_samples} samples cannot feed {num_replicas} processes")
        super().__init__(
            range(num_samples),
            num_replicas=num_replicas,
            rank=rank,
            shuffle=False,
            seed=base_seed,
            drop_last=True,
        )
        # DistributedSampler's num_samples is per rank; this is the epoch's, all ranks.
        self.epoch_samples = num_samples
        self.base_seed = base_seed
        self._skip = 0  # this rank's seeds to leave out of the next iteration (resume_at)

    def resume_at(self, epoch: int, skip: int) -> None:
        """Makes the next iteration epoch ``epoch``'s seeds without this rank's first ``skip``.

        A fit resumed mid-epoch thus trains on the crops an uninterrupted fit would have
        seen next, instead of restarting the epoch (or epoch 0) from its first crop.
        """
        if not 0 <= skip <= self.num_samples:
            raise ValueError(f"skip must be in [0, {self.num_samples}], got {skip}")
        self.set_epoch(epoch)
        self._skip = skip

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.base_seed, self.epoch])
        self.epoch += 1
        skip, self._skip = self._skip, 0
        seeds = rng.integers(0, np.iinfo(np.int64).max, size=self.epoch_samples, dtype=np.int64)
        return iter(seeds[self.rank : self.total_size : self.num_replicas][skip:].tolist())

    def __len__(self) -> int:
        return self.num_samples


def epoch_seed_sampler(
    num_samples: int, trainer: L.Trainer | None, batch_size: int = 1, drop_last: bool = False
) -> EpochSeedSampler:
    """The training sampler of a datamodule attached to ``trainer`` (None: one process).

    The base seed is ``torch.initial_seed()`` (the ``seed_everything`` seed, a fresh random one
    without it), rank 0's under DDP: were the ranks' seeds to differ, their shares would
    overlap. A trainer restored from a checkpoint (``global_step > 0``) has the sampler
    continue where that checkpoint's run stood (:func:`resume_sampler`); ``batch_size`` and
    ``drop_last`` are the DataLoader's.
    """
    base_seed = torch.initial_seed()
    if trainer is None or trainer.world_size == 1:
        sampler = EpochSeedSampler(num_samples, base_seed)
    else:
        base_seed = trainer.strategy.broadcast(base_seed, src=0)
        sampler = EpochSeedSampler(num_samples, base_seed, trainer.world_size, trainer.global_rank)
    if trainer is not None and trainer.global_step > 0:
        resume_sampler(sampler, trainer, batch_size, drop_last)
    return sampler


def resume_sampler(
    sampler: EpochSeedSampler, trainer: L.Trainer, batch_size: int, drop_last: bool = False
) -> None:
    """Positions ``sampler`` after the batches of the ``trainer.global_step`` steps done.

    Lightning restarts the training DataLoader from its first batch when it resumes
    mid-epoch (and, since it creates the iterator before it sets the sampler's epoch, from
    epoch 0's seeds). Every epoch here has the same number of batches, so the step count
    alone tells the epoch and the batch to go on from. With ``limit_train_batches`` the
    epoch length is not the loader's and the sampler is left as it is (with a warning).

    A checkpoint saved after the *last* batch of an epoch is the exception: Lightning 2.6
    then ends its resumed epoch after one batch and starts the next, so from the second
    batch on the crops are those of one epoch later than an uninterrupted fit's (the step
    count is still exact).
    """
    if trainer.limit_train_batches not in (1, 1.0):
        rank_zero_warn(
            "limit_train_batches is set: a resumed fit restarts its epoch's crops from the first"
        )
        return
    rounding = math.floor if drop_last else math.ceil
    batches_per_epoch = max(rounding(len(sampler) / batch_size), 1)
    batches_done = trainer.global_step * trainer.accumulate_grad_batches
    epoch, batch = divmod(batches_done, batches_per_epoch)
    sampler.resume_at(epoch, batch * batch_size)


def evaluation_sampler(dataset: Dataset, trainer: L.Trainer | None) -> Sampler[int] | None:
    """Under DDP, each image of ``dataset`` once, on one rank; None (in order) otherwise.

    Lightning's default distributed sampler pads the dataset to a multiple of the number of
    processes by repeating images, which metrics averaged over images would count twice.
    With this one ranks may hold one image more than others; the metrics gather per-image
    scores (:class:`~protoseg.metrics.NucleiMetrics`), so every image counts once. With fewer
    images than processes a rank would have none and skip the epoch-end hooks where metrics
    sync (a hang), so Lightning's padding sampler is kept, with a warning.
    """
    if trainer is None or trainer.world_size == 1:
        return None
    if len(dataset) < trainer.world_size:
        rank_zero_warn(
            f"{len(dataset)} evaluation images for {trainer.world_size} processes: some "
            "images are scored twice (Lightning pads every process to one image)"
        )
        return None
    return UnrepeatedDistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )
