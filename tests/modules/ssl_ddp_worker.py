"""Run by tests/modules/test_ssl_losses.py: the DDP parts of the SSL losses on 2 CPU ranks.

``python ssl_ddp_worker.py OUT_DIR`` spawns two gloo ranks; each computes NT-Xent on its
half of a fixed batch with gathered negatives, enqueues its keys into a MoCo queue and
updates a DINO center, then saves what it saw to ``OUT_DIR/rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from protoseg.modules.ssl_losses import DINOCenter, MoCoQueue, nt_xent_loss

WORLD = 2
PER_RANK = 3


def inputs() -> dict[str, torch.Tensor]:
    """The full batch (both ranks' halves), the same in every process."""
    generator = torch.Generator().manual_seed(0)
    return {
        "z1": torch.randn(WORLD * PER_RANK, 5, generator=generator),
        "z2": torch.randn(WORLD * PER_RANK, 5, generator=generator),
        "keys": torch.randn(WORLD * PER_RANK, 4, generator=generator),
        "teacher": torch.randn(WORLD * PER_RANK, 6, generator=generator),
    }


def worker(rank: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=WORLD
    )
    local = {k: v[rank * PER_RANK : (rank + 1) * PER_RANK] for k, v in inputs().items()}
    z1 = local["z1"].clone().requires_grad_(True)
    z2 = local["z2"].clone().requires_grad_(True)
    loss = nt_xent_loss(z1, z2, temperature=0.5)
    loss.backward()
    queue = MoCoQueue(dim=4, size=8)
    queue.enqueue(local["keys"])
    center = DINOCenter(dim=6, momentum=0.9)
    center.update(local["teacher"])
    result = {
        "loss": loss.detach(),
        "grad_z1": z1.grad,
        "grad_z2": z2.grad,
        "queue": queue.queue,
        "pointer": queue.pointer,
        "center": center.center,
    }
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1],), nprocs=WORLD, join=True)
