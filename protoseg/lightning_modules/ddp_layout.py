"""Weights in the layout of their gradients when DDP trains them.

The SSL, PSM, centre-detector and segmentation modules feed their networks channels-last
batches, so their convolution weights' gradients come out channels-last. DDP lays its
gradient buckets out like the parameters when it wraps the model; with contiguous weights
every gradient then has to be copied across layouts into its bucket at each step, and
PyTorch warns ("Grad strides do not match bucket view strides"). Putting the weights in
channels-last layout before the wrap makes the gradients match their buckets.

For a fit under DDP only. On one CPU process the layout changes no trained weight (12 head
steps, bf16 and float32: bitwise equal) but does change inference in the last bits: the PSM
head's maps of 6 images predicted by 2 DDP ranks with channels-last weights differed from
one process's in 655-4,662 foreground pixels each. A DDP validate, test or predict keeps
the layout, so it writes one process's maps to the bit.
"""

from __future__ import annotations

import lightning as L
import torch


def channels_last_under_ddp(module: L.LightningModule, stage: str) -> None:
    """Puts ``module``'s 4-d weights in channels-last layout for a fit whose trainer runs
    more than one process; call it from ``setup``, which Lightning runs before the wrap."""
    trainer = module._trainer
    if stage == "fit" and trainer is not None and trainer.world_size > 1:
        module.to(memory_format=torch.channels_last)
