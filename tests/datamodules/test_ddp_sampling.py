"""DDP shares of the training seeds and of the evaluation images, checked without processes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from protoseg.datamodules.transforms import (
    EpochSeedSampler,
    epoch_seed_sampler,
    evaluation_sampler,
)


class SeedEcho(Dataset):
    """Item ``seed`` -> the seed itself, so that batches show which seeds they hold."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, seed: int) -> torch.Tensor:
        return torch.tensor(seed)


def test_ranks_split_the_epoch_seeds_like_one_process_with_the_global_batch() -> None:
    single = list(EpochSeedSampler(12, base_seed=3))
    shares = [list(EpochSeedSampler(12, 3, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shares] == [4, 4, 4]
    assert sorted(sum(shares, [])) == sorted(single), "disjoint and complete"
    # Rank batches of 2 at step k together are the single process's batch k of 6.
    for k in range(2):
        step = {seed for share in shares for seed in share[2 * k : 2 * k + 2]}
        assert step == set(single[6 * k : 6 * k + 6])


def test_the_remainder_is_dropped_and_epochs_replay() -> None:
    samplers = [EpochSeedSampler(7, 1, num_replicas=2, rank=r) for r in range(2)]
    assert [len(s) for s in samplers] == [3, 3]
    first = [list(s) for s in samplers]
    assert set(first[0]).isdisjoint(first[1])
    assert [list(s) for s in samplers] != first, "the next epoch draws new seeds"
    for sampler in samplers:
        sampler.set_epoch(0)
    assert [list(s) for s in samplers] == first, "set_epoch replays (resuming)"
    # A DistributedSampler: Lightning uses it as it is, without its shuffling wrapper.
    assert isinstance(samplers[0], DistributedSampler)
    with pytest.raises(ValueError, match="cannot feed"):
        EpochSeedSampler(1, 0, num_replicas=2, rank=0)


def test_rank_batches_do_not_depend_on_workers() -> None:
    def batches(workers: int) -> list[torch.Tensor]:
        sampler = EpochSeedSampler(8, 5, num_replicas=2, rank=1)
        loader = DataLoader(SeedEcho(), batch_size=2, sampler=sampler, num_workers=workers)
        return list(loader)

    for a, b in zip(batches(0), batches(2), strict=True):
        torch.testing.assert_close(a, b)


def test_datamodule_helpers_follow_the_trainer() -> None:
    torch.manual_seed(17)
    alone = epoch_seed_sampler(6, None)
    assert alone.base_seed == 17 and alone.num_replicas == 1 and len(alone) == 6

    images = list(range(5))
    ranks = [SimpleNamespace(world_size=2, global_rank=r) for r in range(2)]
    shares = [list(evaluation_sampler(images, t)) for t in ranks]  # type: ignore[arg-type]
    assert shares == [[0, 2, 4], [1, 3]], "each image once, no padding duplicate"
    assert evaluation_sampler(images, SimpleNamespace(world_size=1, global_rank=0)) is None
    assert evaluation_sampler([0], ranks[0]) is None  # type: ignore[arg-type]
