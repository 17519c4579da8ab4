"""DDP shares of the training seeds and of the evaluation images, checked without processes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from protoseg.data.samplers import (
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


def test_resume_at_continues_an_epoch_where_it_stood() -> None:
    whole = EpochSeedSampler(12, base_seed=5)
    whole.set_epoch(3)
    expected = list(whole)
    resumed = EpochSeedSampler(12, base_seed=5)
    resumed.resume_at(epoch=3, skip=8)
    assert list(resumed) == expected[8:]
    # The skip applies once: the next epoch is whole again.
    resumed.set_epoch(4)
    whole.set_epoch(4)
    assert list(resumed) == list(whole)
    with pytest.raises(ValueError, match="skip"):
        resumed.resume_at(epoch=0, skip=13)


class _RestoredTrainer:
    """The few trainer attributes the sampler reads, as after loading a checkpoint."""

    world_size, global_rank, limit_train_batches = 1, 0, 1.0

    def __init__(self, global_step: int, accumulate_grad_batches: int = 1) -> None:
        self.global_step = global_step
        self.accumulate_grad_batches = accumulate_grad_batches


@pytest.mark.parametrize(
    ("global_step", "accumulate", "drop_last", "epoch", "skip"),
    [
        (2, 1, False, 0, 4),
        (4, 1, False, 1, 0),
        (5, 1, False, 1, 2),
        (3, 2, False, 1, 4),
        (3, 1, True, 1, 0),
    ],
)
def test_restored_trainer_positions_the_sampler(
    global_step: int, accumulate: int, drop_last: bool, epoch: int, skip: int
) -> None:
    # 7 samples at batch 2: 4 batches per epoch, 3 with drop_last.
    torch.manual_seed(3)
    trainer = _RestoredTrainer(global_step, accumulate)
    sampler = epoch_seed_sampler(7, trainer, batch_size=2, drop_last=drop_last)  # type: ignore[arg-type]
    reference = EpochSeedSampler(7, base_seed=3)
    reference.set_epoch(epoch)
    assert list(sampler) == list(reference)[skip:]
