"""For a DDP fit the modules that feed channels-last batches put their weights in that
layout before the wrap, so the gradients match DDP's buckets; one process, and DDP
validation, test and prediction, keep them as they are."""

from __future__ import annotations

import lightning as L
import torch
from conftest import cpu_trainer
from torch import nn

from protoseg.lightning_modules.centre_detector import CentreDetectorModule
from protoseg.lightning_modules.segmentation import SegmentationModule
from protoseg.lightning_modules.simclr import SimCLRModule
from protoseg.modules.networks import UNet


def _conv_weights(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.dim() == 4]


def _modules() -> list[L.LightningModule]:
    def tiny_unet(classes: int) -> UNet:
        return UNet("resnet18", decoder_channels=(16, 16, 8, 8, 8), num_classes=classes)

    backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    backbone.num_features = 8  # type: ignore[assignment]
    return [
        SegmentationModule(net=tiny_unet(3)),
        CentreDetectorModule(net=tiny_unet(3)),
        SimCLRModule(backbone=backbone, augment=nn.Identity()),
    ]


def test_weights_go_channels_last_for_a_ddp_fit_only() -> None:
    for devices, stage in ((1, "fit"), (2, "predict"), (2, "validate"), (2, "fit")):
        for module in _modules():
            module.trainer = cpu_trainer(devices)
            module.setup(stage)
            name = f"{type(module).__name__} ({devices} processes, {stage})"
            weights = _conv_weights(module)
            assert weights, name
            channels_last = [w.is_contiguous(memory_format=torch.channels_last) for w in weights]
            if devices == 2 and stage == "fit":
                assert all(channels_last), f"{name}: DDP's buckets need channels-last"
            else:
                assert all(w.is_contiguous() for w in weights), f"{name}: layout kept"
