"""Self-supervised objectives: pure loss functions, plus the two that keep state.

Under ``torch.distributed`` (DDP), NT-Xent sees the negatives of every rank, the MoCo queue
stores the keys of every rank and the DINO center averages the teacher outputs of every
rank; in a single process the same code runs without communication.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the gradient of its own slice.

    Every rank's loss depends on every rank's slice, so the gradient of the summed loss with
    respect to a slice is the sum over ranks of their gradients for it: an all_reduce.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rank, world = _world()
        return grad.chunk(world)[rank]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(N, ...) per rank -> (world * N, ...), rank order; gradient flows to the local slice."""
    if _world()[1] == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(N, ...) per rank -> (world * N, ...), rank order, without gradient."""
    world = _world()[1]
    if world == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered)


def nt_xent_loss(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, gather: bool = True
) -> torch.Tensor:
    """SimCLR's NT-Xent (Chen et al., ICML 2020), symmetric over both views.

    Each of the 2N local embeddings is an anchor; its positive is the other view of the same
    image and its negatives are the other 2N - 2 embeddings (2WN - 2 when gathering from W
    ranks). The loss is the mean of ``l(i, j)`` over the local anchors.

    Args:
        z1: (N, D) projections of the first views (normalised inside).
        z2: (N, D) projections of the second views.
        temperature: softmax temperature tau.
        gather: under DDP, take the negatives from every rank.

    Returns:
        Scalar loss.
    """
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    count = z1.shape[0]
    rank, world = _world()
    if not gather:
        rank, world = 0, 1
    if world > 1:
        candidates = torch.cat([all_gather_with_grad(z1), all_gather_with_grad(z2)])
    else:
        candidates = torch.cat([z1, z2])
    anchors = torch.cat([z1, z2])
    logits = anchors @ candidates.T / temperature
    # Row i of the local first views sits at rank * N + i among the gathered first views,
    # and its second view W * N further down the candidates.
    local = torch.arange(count, device=z1.device) + rank * count
    self_index = torch.cat([local, local + world * count])
    positive_index = torch.cat([local + world * count, local])
    rows = torch.arange(2 * count, device=z1.device)
    logits[rows, self_index] = float("-inf")
    return F.cross_entropy(logits, positive_index)


def infonce_queue_loss(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """MoCo's InfoNCE (He et al., CVPR 2020): the key of the same image against a queue.

    Args:
        q: (N, D) queries (normalised inside).
        k: (N, D) keys of the other views from the momentum encoder (normalised and detached
            inside: keys never receive gradient).
        queue: (K, D) l2-normalised keys of earlier batches, the negatives.
        temperature: softmax temperature.

    Returns:
        Scalar loss: cross-entropy with the positive logit ``q . k`` at index 0.
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.detach().T
    logits = torch.cat([positive, negative], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss (Grill et al., NeurIPS 2020): mean of ``2 - 2 cos(p, z)``.

    Args:
        p: (N, D) online predictions.
        z: (N, D) target projections of the other view; the caller detaches them.
    """
    return (2 - 2 * F.cosine_similarity(p, z, dim=-1)).mean()


def dino_loss(
    student_out: list[torch.Tensor],
    teacher_out: list[torch.Tensor],
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """DINO's cross-entropy between teacher and student views (Caron et al., ICCV 2021).

    The teacher's distribution is centered and sharpened, ``softmax((t - center) / T_t)``
    (no gradient); the student's is ``log_softmax(s / T_s)``. Every (teacher view, student
    view) pair of different views contributes ``-sum_k P_t log P_s`` averaged over the
    batch; the loss is the mean over pairs.

    Args:
        student_out: V tensors (B, K): the student's logits for all views, the global crops
            first, in the teacher's order.
        teacher_out: the teacher's logits (B, K) for the global crops (usually 2).
        center: (K,) or (1, K) running mean of the teacher logits.
        student_temp: student temperature.
        teacher_temp: teacher temperature (sharpening).
    """
    teacher_probs = [F.softmax((t.detach() - center) / teacher_temp, dim=-1) for t in teacher_out]
    student_logp = [F.log_softmax(s / student_temp, dim=-1) for s in student_out]
    total = student_out[0].new_zeros(())
    pairs = 0
    for iq, probs in enumerate(teacher_probs):
        for v, logp in enumerate(student_logp):
            if v == iq:
                continue
            total = total + (-(probs * logp).sum(dim=-1)).mean()
            pairs += 1
    return total / pairs


class MoCoQueue(nn.Module):
    """MoCo's FIFO dictionary of keys: a ring buffer of (size, dim) l2-normalised rows.

    Args:
        dim: key width D.
        size: number of keys K held.
    """

    queue: torch.Tensor
    pointer: torch.Tensor

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def keys(self) -> torch.Tensor:
        """(K, D) copy of the queue: the loss must not see the in-place enqueue that follows."""
        return self.queue.clone()

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replaces the oldest rows by ``keys`` (N, D), gathered from every rank under DDP.

        Writes wrap around the end of the buffer; of more than K keys the last K stay.
        """
        keys = F.normalize(all_gather_no_grad(keys.detach()), dim=1).to(self.queue.dtype)
        size = self.queue.shape[0]
        keys = keys[-size:]
        start = int(self.pointer)
        rows = (torch.arange(keys.shape[0], device=keys.device) + start) % size
        self.queue[rows] = keys
        self.pointer.fill_((start + keys.shape[0]) % size)


class DINOCenter(nn.Module):
    """DINO's center: an EMA of the teacher's mean output, averaged over ranks under DDP.

    Args:
        dim: output width K.
        momentum: EMA momentum m; ``center = m * center + (1 - m) * batch_mean``.
    """

    center: torch.Tensor

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))

    @torch.no_grad()
    def update(self, teacher_out: torch.Tensor) -> None:
        """Moves the center toward the mean of ``teacher_out`` (N, K) over all ranks."""
        total = teacher_out.detach().sum(dim=0, keepdim=True).to(self.center.dtype)
        count = torch.tensor(float(teacher_out.shape[0]), device=total.device)
        if _world()[1] > 1:
            dist.all_reduce(total)
            dist.all_reduce(count)
        self.center.mul_(self.momentum).add_(total / count, alpha=1 - self.momentum)
