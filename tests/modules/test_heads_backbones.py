"""Heads' shapes and layers, timm backbones, and loading encoder weights by path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from protoseg.io.errors import DataError
from protoseg.modules.backbones import TimmBackbone, encoder_checkpoint, save_encoder_checkpoint
from protoseg.modules.heads import (
    DINOHead,
    MLPHead,
    byol_prediction_head,
    byol_projection_head,
    moco_v2_projection_head,
    simclr_projection_head,
)
from protoseg.modules.networks import UNet


def kinds(head: nn.Module) -> list[type]:
    return [type(m) for m in head.modules() if isinstance(m, nn.Linear | nn.BatchNorm1d)]


def test_mlp_head_layers_and_shapes() -> None:
    head = MLPHead(8, 16, 4, num_layers=3, batch_norm=True, last_batch_norm=True)
    assert kinds(head) == [nn.Linear, nn.BatchNorm1d] * 3
    assert all(m.bias is None for m in head.modules() if isinstance(m, nn.Linear))
    assert head(torch.randn(5, 8)).shape == (5, 4)
    single = MLPHead(8, 16, 4, num_layers=1)
    assert kinds(single) == [nn.Linear] and single(torch.randn(2, 8)).shape == (2, 4)
    with pytest.raises(ValueError):
        MLPHead(8, 16, 4, num_layers=0)


def test_named_heads() -> None:
    assert kinds(simclr_projection_head(8, 16, 4)) == [nn.Linear, nn.BatchNorm1d, nn.Linear]
    assert kinds(moco_v2_projection_head(8, 16, 4)) == [nn.Linear, nn.Linear]
    assert byol_projection_head(8, 32, 6)(torch.randn(3, 8)).shape == (3, 6)
    assert byol_prediction_head(6, 32, 6)(torch.randn(3, 6)).shape == (3, 6)


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_dino_head_is_a_cosine_to_unit_prototypes(norm_last_layer: bool) -> None:
    head = DINOHead(8, out_dim=32, hidden_dim=16, bottleneck_dim=4, norm_last_layer=norm_last_layer)
    logits = head(torch.randn(5, 8))
    assert logits.shape == (5, 32)
    if norm_last_layer:
        # l2-normalised bottleneck times unit-norm prototype rows: cosines.
        assert logits.abs().max() <= 1 + 1e-5
    magnitude = head.last_layer.parametrizations.weight.original0
    assert magnitude.requires_grad is not norm_last_layer
    logits.sum().backward()
    assert head.last_layer.parametrizations.weight.original1.grad is not None


def test_timm_backbone_pools_features() -> None:
    backbone = TimmBackbone("test_resnet")
    features = backbone(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, backbone.num_features)


def test_weights_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(DataError, match="nope.ckpt: backbone weights file does not exist"):
        TimmBackbone("test_resnet", weights=str(missing))
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"head.weight": torch.zeros(2, 2)}, unrelated)
    with pytest.raises(ValueError, match="unrelated.pt"):
        TimmBackbone("test_resnet", weights=str(unrelated))


@pytest.mark.parametrize(
    "prefix", ["", "backbone.", "encoder.", "backbone.model.", "model.", "net.net.encoder.model."]
)
def test_weights_load_with_any_known_prefix(tmp_path: Path, prefix: str) -> None:
    source = TimmBackbone("test_resnet")
    state = {f"{prefix}{k}": v for k, v in source.model.state_dict().items()}
    path = tmp_path / "weights.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    loaded = TimmBackbone("test_resnet", weights=str(path))
    for key, value in source.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value)


def test_encoder_checkpoint_loads_into_backbone_and_unet(tmp_path: Path) -> None:
    source = TimmBackbone("resnet18")
    checkpoint = encoder_checkpoint(source)
    assert checkpoint["backbone"] == "resnet18"
    assert "conv1.weight" in checkpoint["state_dict"], "plain timm keys"
    path = save_encoder_checkpoint(source, tmp_path / "sub" / "encoder.ckpt")
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    backbone = TimmBackbone("resnet18", weights=str(path))
    unet = UNet("resnet18", encoder_weights=str(path), decoder_channels=(16, 16, 8, 8, 8))
    unet_state = unet.encoder.state_dict()
    for key, value in source.model.state_dict().items():
        torch.testing.assert_close(backbone.model.state_dict()[key], value)
        torch.testing.assert_close(unet_state[f"model.{key}"], value)
