"""The U-Net builds from a timm name, runs, and loads encoder weights from a local path."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from protoseg.io.errors import DataError
from protoseg.modules.networks import UNet


def test_unet_shapes() -> None:
    net = UNet("resnet18", num_classes=3, decoder_channels=(32, 16, 16, 8, 8))
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 3, 64, 64)
    assert net.output_stride == 32


def test_loads_timm_and_lightning_style_state_dicts(tmp_path: Path) -> None:
    source = timm.create_model("resnet18", pretrained=False)
    plain = tmp_path / "plain.pt"
    torch.save(source.state_dict(), plain)
    wrapped = tmp_path / "wrapped.ckpt"
    torch.save(
        {"state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()}}, wrapped
    )
    for path in (plain, wrapped):
        net = UNet("resnet18", encoder_weights=str(path))
        torch.testing.assert_close(net.encoder.model.conv1.weight, source.conv1.weight)


def test_bad_weights_paths_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.pt: backbone weights file does not exist"):
        UNet("resnet18", encoder_weights=str(tmp_path / "missing.pt"))
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"foo": torch.zeros(3)}, unrelated)
    with pytest.raises(ValueError, match="unrelated.pt"):
        UNet("resnet18", encoder_weights=str(unrelated))
