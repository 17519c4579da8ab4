"""SSL losses against independent references (explicit loops over pairs, numpy float64)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protoseg.modules.ssl_losses import (
    DINOCenter,
    MoCoQueue,
    byol_loss,
    dino_loss,
    infonce_queue_loss,
    nt_xent_loss,
)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def nt_xent_reference(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """SimCLR paper, Algorithm 1: views interleaved as 2k-1, 2k; l(i, j) both directions."""
    n = len(z1)
    z = np.empty((2 * n, z1.shape[1]))
    z[0::2], z[1::2] = unit(z1), unit(z2)

    def loss_ij(i: int, j: int) -> float:
        denominator = sum(np.exp(z[i] @ z[k] / tau) for k in range(2 * n) if k != i)
        return -np.log(np.exp(z[i] @ z[j] / tau) / denominator)

    return sum(loss_ij(2 * k, 2 * k + 1) + loss_ij(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_matches_paper_formula(tau: float) -> None:
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    loss = nt_xent_loss(torch.tensor(z1), torch.tensor(z2), temperature=tau)
    assert loss.item() == pytest.approx(nt_xent_reference(z1, z2, tau), rel=1e-9)


def test_nt_xent_is_small_for_matching_views_and_symmetric() -> None:
    z = torch.eye(4)
    assert nt_xent_loss(z, z, 0.05) < 1e-3
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    torch.testing.assert_close(nt_xent_loss(a, b), nt_xent_loss(b, a))


def test_infonce_queue_loss_matches_loop() -> None:
    rng = np.random.default_rng(1)
    q, k, queue = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), unit(rng.normal(size=(5, 4)))
    expected = 0.0
    for qi, ki in zip(unit(q), unit(k), strict=True):
        logits = np.array([qi @ ki] + [qi @ negative for negative in queue]) / 0.2
        expected += -log_softmax(logits)[0]
    loss = infonce_queue_loss(torch.tensor(q), torch.tensor(k), torch.tensor(queue), 0.2)
    assert loss.item() == pytest.approx(expected / len(q), rel=1e-9)


def test_infonce_keys_get_no_gradient() -> None:
    q, k = torch.randn(2, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    infonce_queue_loss(q, k, F.normalize(torch.randn(4, 3), dim=1)).backward()
    assert q.grad is not None and k.grad is None


def test_byol_loss_is_two_minus_two_cosine() -> None:
    rng = np.random.default_rng(2)
    p, z = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    expected = np.mean(
        [
            2 - 2 * (pi @ zi) / (np.linalg.norm(pi) * np.linalg.norm(zi))
            for pi, zi in zip(p, z, strict=True)
        ]
    )
    assert byol_loss(torch.tensor(p), torch.tensor(z)).item() == pytest.approx(expected)
    assert byol_loss(torch.tensor(p), torch.tensor(3 * p)).item() == pytest.approx(0, abs=1e-12)


def dino_reference(
    student: list[np.ndarray], teacher: list[np.ndarray], center: np.ndarray, ts: float, tt: float
) -> float:
    """Per-sample loop over (teacher view, student view) pairs with different view index."""
    terms = []
    for iq, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == iq:
                continue
            per_sample = []
            for b in range(t.shape[0]):
                weights = np.exp((t[b] - center) / tt)
                probs = weights / weights.sum()
                per_sample.append(-(probs * log_softmax(s[b] / ts)).sum())
            terms.append(np.mean(per_sample))
    return float(np.mean(terms))


def test_dino_loss_matches_pairwise_loop() -> None:
    rng = np.random.default_rng(3)
    student = [rng.normal(size=(2, 7)) for _ in range(4)]  # 2 global + 2 local views
    teacher = [rng.normal(size=(2, 7)) for _ in range(2)]
    center = rng.normal(size=7) * 0.1
    loss = dino_loss(
        [torch.tensor(s) for s in student],
        [torch.tensor(t) for t in teacher],
        torch.tensor(center)[None],
        student_temp=0.1,
        teacher_temp=0.04,
    )
    assert loss.item() == pytest.approx(dino_reference(student, teacher, center, 0.1, 0.04))


def test_dino_teacher_gets_no_gradient() -> None:
    student = [torch.randn(2, 5, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(2, 5, requires_grad=True) for _ in range(2)]
    dino_loss(student, teacher, torch.zeros(1, 5)).backward()
    assert all(s.grad is not None for s in student)
    assert all(t.grad is None for t in teacher)


def test_moco_queue_is_a_fifo_ring_buffer() -> None:
    queue = MoCoQueue(dim=3, size=5)
    torch.testing.assert_close(queue.queue.norm(dim=1), torch.ones(5))
    batches = [F.normalize(torch.randn(2, 3), dim=1) for _ in range(3)]
    queue.enqueue(batches[0])
    queue.enqueue(batches[1])
    torch.testing.assert_close(queue.queue[:4], torch.cat(batches[:2]))
    assert int(queue.pointer) == 4
    queue.enqueue(batches[2])  # wraps: row 4, then row 0 (the oldest key)
    torch.testing.assert_close(queue.queue[4], batches[2][0])
    torch.testing.assert_close(queue.queue[0], batches[2][1])
    torch.testing.assert_close(queue.queue[1], batches[0][1])
    assert int(queue.pointer) == 1
    many = F.normalize(torch.randn(7, 3), dim=1)
    queue.enqueue(many)  # more keys than rows: the last 5 stay, written from the pointer on
    assert int(queue.pointer) == 1
    expected = torch.empty(5, 3)
    expected[[1, 2, 3, 4, 0]] = many[2:]
    torch.testing.assert_close(queue.queue, expected)


def test_moco_queue_stores_normalised_keys_and_copies() -> None:
    queue = MoCoQueue(dim=2, size=4)
    keys = queue.keys()
    queue.enqueue(torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(queue.queue[0], torch.tensor([0.6, 0.8]))
    assert not torch.equal(keys[0], queue.queue[0]), "keys() is a copy, not a view"


def test_dino_center_is_an_ema_of_batch_means() -> None:
    center = DINOCenter(dim=2, momentum=0.9)
    center.update(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    torch.testing.assert_close(center.center, torch.tensor([[0.2, 0.3]]))
    center.update(torch.tensor([[0.0, 10.0]]))
    torch.testing.assert_close(center.center, torch.tensor([[0.18, 1.27]]))


def test_ddp_gathers_negatives_keys_and_center(tmp_path: Path) -> None:
    """Two gloo ranks equal one process holding the whole batch."""
    worker = Path(__file__).with_name("ssl_ddp_worker.py")
    subprocess.run([sys.executable, str(worker), str(tmp_path)], check=True, timeout=120)
    sys.path.insert(0, str(worker.parent))
    try:
        from ssl_ddp_worker import PER_RANK, WORLD, inputs
    finally:
        sys.path.remove(str(worker.parent))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    full = inputs()
    z1 = full["z1"].clone().requires_grad_(True)
    z2 = full["z2"].clone().requires_grad_(True)
    loss = nt_xent_loss(z1, z2, temperature=0.5)
    loss.backward()
    # Each rank's loss is the mean over its anchors (with all 2WN - 2 negatives), so the
    # mean of the ranks' losses is the full loss; the all_reduce in the gather's backward
    # gives each rank W times the full gradient, which DDP's averaging divides back.
    torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), loss.detach())
    for rank, result in enumerate(ranks):
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        torch.testing.assert_close(result["grad_z1"], WORLD * z1.grad[rows])
        torch.testing.assert_close(result["grad_z2"], WORLD * z2.grad[rows])
    keys = F.normalize(full["keys"], dim=1)
    for result in ranks:
        torch.testing.assert_close(result["queue"][: WORLD * PER_RANK], keys)
        assert int(result["pointer"]) == WORLD * PER_RANK
        torch.testing.assert_close(result["center"], 0.1 * full["teacher"].mean(0, keepdim=True))
