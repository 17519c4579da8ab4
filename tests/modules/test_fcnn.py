"""The patch-contrastive FCNN: size of the paper's network, full-resolution output."""

from __future__ import annotations

import pytest
import torch

from protoseg.modules.fcnn import TinyFCNN


def test_default_size_is_the_papers() -> None:
    parameters = sum(p.numel() for p in TinyFCNN().parameters())
    assert 10_500 <= parameters <= 11_000


@pytest.mark.parametrize("size", [(17, 23), (64, 64)])
def test_output_keeps_input_size(size: tuple[int, int]) -> None:
    net = TinyFCNN(num_classes=2).eval()
    assert net(torch.rand(2, 3, *size)).shape == (2, 2, *size)


def test_rejects_inconsistent_arguments() -> None:
    with pytest.raises(ValueError, match="differ"):
        TinyFCNN(widths=(8, 8), dilations=(1,))
    with pytest.raises(ValueError, match="num_classes"):
        TinyFCNN(num_classes=1)
