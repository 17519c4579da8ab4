"""lightly's implementation of SimCLR, MoCo v2, BYOL and DINO, as the benchmark times it.

Each method follows lightly's own example (``examples/pytorch/<method>.py`` of lightly 1.6):
its transforms (PIL/torchvision, per image, in the DataLoader), heads, losses and
``update_momentum``; the backbone, optimizer and head widths are ours, so that only the
method's implementation differs. Augmentation settings are matched to ours (crop scale,
flips, 90-degree turns, colour jitter, blur, no grey, no solarisation); lightly has no HED
jitter, which ours adds on top. Imported only by ``benchmarks/ssl_bench.py``: lightly is not a
protoseg dependency (``make bench-ssl`` installs it).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Step = Callable[[Any], None]


def _common(size: int) -> dict[str, Any]:
    # Ours: PathologyViewAugment(scale=(0.2, 1), jitter (0.4, 0.4, 0.2, 0.05) p=0.8, blur 0.5,
    # flips 0.5, random multiple of 90 degrees). A 90-degree turn with p=0.5 and both flips
    # draw the same 8 orientations uniformly.
    return dict(
        cj_prob=0.8,
        cj_strength=1.0,
        cj_bright=0.4,
        cj_contrast=0.4,
        cj_sat=0.2,
        cj_hue=0.05,
        random_gray_scale=0.0,
        vf_prob=0.5,
        hf_prob=0.5,
        rr_prob=0.5,
    )


def lightly_transform(method: str, size: int, local_size: int, num_local: int) -> Callable:
    """lightly's multi-view transform of ``method``: PIL image -> list of view tensors."""
    from lightly.transforms import (
        BYOLTransform,
        BYOLView1Transform,
        BYOLView2Transform,
        DINOTransform,
        MoCoV2Transform,
        SimCLRTransform,
    )

    common = _common(size)
    if method == "simclr":
        return SimCLRTransform(input_size=size, min_scale=0.2, gaussian_blur=0.5, **common)
    if method == "moco":
        return MoCoV2Transform(input_size=size, min_scale=0.2, gaussian_blur=0.5, **common)
    if method == "byol":
        view = dict(input_size=size, min_scale=0.2, gaussian_blur=0.5, solarization_prob=0.0)
        return BYOLTransform(
            view_1_transform=BYOLView1Transform(**view, **common),
            view_2_transform=BYOLView2Transform(**view, **common),
        )
    if method == "dino":
        return DINOTransform(
            global_crop_size=size,
            local_crop_size=local_size,
            n_local_views=num_local,
            gaussian_blur=(0.5, 0.5, 0.5),
            solarization_prob=0.0,
            **common,
        )
    raise ValueError(f"unknown method {method!r}")


def lightly_step(
    method: str,
    backbone: nn.Module,
    device: torch.device,
    lr: float,
    total_steps: int,
    bf16: bool = False,
) -> Step:
    """A training step ``views -> None`` (forward, loss, backward, optimizer) of lightly's
    ``method`` on ``backbone`` (features (B, F)), with the widths of configs/ssl/*.yaml;
    with ``bf16``, forward and loss under bf16 autocast (as ours in the same run)."""
    from lightly.loss import DINOLoss, NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules import (
        BYOLPredictionHead,
        BYOLProjectionHead,
        DINOProjectionHead,
        MoCoProjectionHead,
        SimCLRProjectionHead,
    )
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule

    width = backbone.num_features
    modules: dict[str, nn.Module] = {"backbone": backbone}
    if method == "simclr":
        modules["head"] = SimCLRProjectionHead(width, 2048, 128)
        criterion: nn.Module = NTXentLoss(temperature=0.1)
    elif method == "moco":
        modules["head"] = MoCoProjectionHead(width, 2048, 128)
        criterion = NTXentLoss(temperature=0.2, memory_bank_size=(8192, 128))
    elif method == "byol":
        modules["head"] = BYOLProjectionHead(width, 2048, 256)
        modules["predictor"] = BYOLPredictionHead(256, 2048, 256)
        criterion = NegativeCosineSimilarity()
    elif method == "dino":
        modules["head"] = DINOProjectionHead(width, 2048, 256, 4096, freeze_last_layer=1)
        criterion = DINOLoss(output_dim=4096, warmup_teacher_temp_epochs=5)
    else:
        raise ValueError(f"unknown method {method!r}")
    if method != "simclr":
        modules["backbone_ema"] = copy.deepcopy(backbone)
        if method == "dino":
            # As lightly's example: its weight-normalised head cannot be deep-copied.
            modules["head_ema"] = DINOProjectionHead(width, 2048, 256, 4096)
            modules["head_ema"].load_state_dict(modules["head"].state_dict())
        else:
            modules["head_ema"] = copy.deepcopy(modules["head"])
        deactivate_requires_grad(modules["backbone_ema"])
        deactivate_requires_grad(modules["head_ema"])
    net = nn.ModuleDict(modules).to(device).train()
    criterion = criterion.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    state = {"step": 0}

    def online(x: torch.Tensor) -> torch.Tensor:
        return net["head"](net["backbone"](x))

    def ema(x: torch.Tensor) -> torch.Tensor:
        return net["head_ema"](net["backbone_ema"](x)).detach()

    def step(views: list[torch.Tensor]) -> None:
        views = [v.to(device, non_blocking=True) for v in views]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = forward_loss(views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if method == "dino":
            net["head"].cancel_last_layer_gradients(current_epoch=0)
        optimizer.step()
        state["step"] += 1

    def forward_loss(views: list[torch.Tensor]) -> torch.Tensor:
        k = state["step"]
        if method == "simclr":
            loss = criterion(online(views[0]), online(views[1]))
        elif method == "moco":
            update_momentum(net["backbone"], net["backbone_ema"], 0.99)
            update_momentum(net["head"], net["head_ema"], 0.99)
            loss = criterion(online(views[0]), ema(views[1]))
        elif method == "byol":
            m = cosine_schedule(k, total_steps, 0.99, 1.0)
            update_momentum(net["backbone"], net["backbone_ema"], m)
            update_momentum(net["head"], net["head_ema"], m)
            p0, p1 = (net["predictor"](online(v)) for v in views)
            z0, z1 = (ema(v) for v in views)
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
        else:
            m = cosine_schedule(k, total_steps, 0.996, 1.0)
            update_momentum(net["backbone"], net["backbone_ema"], m)
            update_momentum(net["head"], net["head_ema"], m)
            teacher = [ema(v) for v in views[:2]]
            student = [online(v) for v in views]
            loss = criterion(teacher, student, epoch=0)
        return loss

    return step
