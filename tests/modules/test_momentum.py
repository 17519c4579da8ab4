"""EMA updates and the schedules of self-supervised training."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from protoseg.modules.momentum import cosine_schedule, update_momentum, warmup_cosine


def test_update_momentum_averages_parameters_and_copies_buffers() -> None:
    online = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    target = copy.deepcopy(online)
    with torch.no_grad():
        for param in target.parameters():
            param.fill_(1.0)
        for param in online.parameters():
            param.fill_(3.0)
    online.train()(torch.randn(4, 2))  # moves the online running statistics
    update_momentum(online, target, m=0.75)
    for param in target.parameters():
        torch.testing.assert_close(param, torch.full_like(param, 0.75 * 1 + 0.25 * 3))
    for online_buffer, target_buffer in zip(online.buffers(), target.buffers(), strict=True):
        torch.testing.assert_close(target_buffer, online_buffer)


def test_update_momentum_extremes() -> None:
    online, target = nn.Linear(3, 1), nn.Linear(3, 1)
    before = [p.clone() for p in target.parameters()]
    update_momentum(online, target, m=1.0)
    for param, old in zip(target.parameters(), before, strict=True):
        torch.testing.assert_close(param, old)
    update_momentum(online, target, m=0.0)
    for param, source in zip(target.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(param, source)
        assert not param.requires_grad or param.grad is None


def test_cosine_schedule_endpoints_midpoint_and_clamp() -> None:
    assert cosine_schedule(0, 100, 0.99, 1.0) == pytest.approx(0.99)
    assert cosine_schedule(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    assert cosine_schedule(100, 100, 0.99, 1.0) == pytest.approx(1.0)
    assert cosine_schedule(500, 100, 0.99, 1.0) == pytest.approx(1.0)
    assert cosine_schedule(-5, 100, 0.99, 1.0) == pytest.approx(0.99)
    # BYOL's formula: tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2.
    k, total = 30, 100
    byol = 1 - (1 - 0.996) * (math.cos(math.pi * k / total) + 1) / 2
    assert cosine_schedule(k, total, 0.996, 1.0) == pytest.approx(byol)


def test_warmup_cosine_multiplier() -> None:
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.0)
    assert warmup_cosine(0, 0, 100) == pytest.approx(1.0)
