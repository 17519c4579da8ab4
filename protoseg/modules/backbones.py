"""Image encoders for self-supervised pretraining: timm models with global-pooled features."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import timm
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from protoseg.io.checkpoints import describe_checkpoint, read_checkpoint
from protoseg.io.errors import DataError

# Prefixes other protoseg stages and common checkpoints put before timm's own keys
# (a Lightning checkpoint of an SSL module holds ``backbone.model.<timm key>``, one of the
# segmentation head ``net.net.encoder.model.<timm key>``).
WEIGHT_PREFIXES = ("backbone.", "encoder.", "model.", "net.")


def _key_candidates(key: str) -> list[str]:
    """``key`` and every name left after stripping known prefixes from its front, in turn."""
    candidates = [key]
    stripped = True
    while stripped:
        stripped = False
        for prefix in WEIGHT_PREFIXES:
            if candidates[-1].startswith(prefix):
                candidates.append(candidates[-1][len(prefix) :])
                stripped = True
                break
    return candidates


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Loads a local state dict into a timm model; nothing is downloaded.

    Accepts a raw ``state_dict``, a checkpoint with a ``state_dict`` entry (a Lightning
    checkpoint, or an ``encoder_ckpt`` written by :func:`save_encoder_checkpoint`), and keys
    prefixed with any chain of ``backbone.``/``encoder.``/``model.``. Tensors whose shape
    differs from the model's are skipped; parameters left unmatched keep their init (warned).

    Raises:
        DataError: the file is missing or not a checkpoint
            (:func:`~protoseg.io.checkpoints.read_checkpoint`), or no tensor of it matches
            the model (the message says what the file holds).
    """
    path = Path(path)
    loaded = read_checkpoint(path, "backbone weights")
    state = loaded.get("state_dict", loaded)
    if not isinstance(state, dict):
        raise DataError(f"{path}: backbone weights hold no state dict")
    target = model.state_dict()
    matched: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for name in _key_candidates(key):
            if name in target and target[name].shape == value.shape:
                matched[name] = value
                break
    if not matched:
        raise DataError(
            f"{path}: no tensor of {describe_checkpoint(loaded)} fits the "
            f"{type(model).__name__} backbone"
        )
    missing = [key for key in target if key not in matched]
    if missing:
        rank_zero_warn(f"{path}: {len(missing)} backbone tensors not in the file ({missing[0]}...)")
    model.load_state_dict(matched, strict=False)


class TimmBackbone(nn.Module):
    """A timm model without classifier: images (B, C, H, W) -> pooled features (B, F).

    Args:
        name: any ``timm.create_model`` name (``resnet18``, ``resnet50``, ``test_resnet``...).
            ViTs need ``dynamic_img_size`` support to take DINO's smaller local crops.
        weights: ``None`` for random init, or a local file (raw state dict, Lightning
            checkpoint or protoseg ``encoder_ckpt``); see :func:`load_backbone_weights`.
        in_chans: input channels.

    Attributes:
        num_features: F, the width of the pooled features (heads are built from it).
        model: the timm model; its ``state_dict`` has plain timm keys.
    """

    def __init__(self, name: str = "resnet18", weights: str | None = None, in_chans: int = 3):
        super().__init__()
        self.name = name
        self.model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
        self.num_features: int = self.model.num_features
        if weights is not None:
            load_backbone_weights(self.model, weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_features)."""
        return self.model(images)


def encoder_checkpoint(backbone: nn.Module) -> dict[str, Any]:
    """``{"backbone": name, "state_dict": tensors}`` on CPU; plain timm keys for a TimmBackbone.

    Plain timm keys load into :class:`TimmBackbone` (``weights=``), into
    the U-Net's encoder (:class:`protoseg.modules.networks.UNet`) and into ``timm.create_model``.
    """
    if isinstance(backbone, TimmBackbone):
        name, module = backbone.name, backbone.model
    else:
        name, module = type(backbone).__name__, backbone
    state = {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}
    return {"backbone": name, "state_dict": state}


def save_encoder_checkpoint(backbone: nn.Module, path: str | Path) -> Path:
    """Writes :func:`encoder_checkpoint` atomically (temporary file, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        torch.save(encoder_checkpoint(backbone), temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
