"""Projection and prediction heads of the self-supervised methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class MLPHead(nn.Module):
    """Linear layers with optional BatchNorm and an activation between them: (B, in) -> (B, out).

    Args:
        in_dim: input width.
        hidden_dim: width of the hidden layers.
        out_dim: output width.
        num_layers: number of linear layers (1 is a single linear map).
        batch_norm: BatchNorm after every hidden linear layer (those layers then have no bias).
        last_batch_norm: BatchNorm after the output layer too (SimCLR v2, BYOL's target).
        activation: activation class between layers.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(activation())
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim, bias=not last_batch_norm))
        if last_batch_norm:
            layers.append(nn.BatchNorm1d(out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        return self.layers(x)


def simclr_projection_head(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> MLPHead:
    """SimCLR's g(.): Linear-BN-ReLU-Linear (Chen et al., ICML 2020)."""
    return MLPHead(in_dim, hidden_dim, out_dim, num_layers=2, batch_norm=True)


def moco_v2_projection_head(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> MLPHead:
    """MoCo v2's 2-layer MLP without BatchNorm (Chen et al., arXiv:2003.04297, 2020)."""
    return MLPHead(in_dim, hidden_dim, out_dim, num_layers=2, batch_norm=False)


def byol_projection_head(in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> MLPHead:
    """BYOL's projector: Linear-BN-ReLU-Linear (Grill et al., NeurIPS 2020)."""
    return MLPHead(in_dim, hidden_dim, out_dim, num_layers=2, batch_norm=True)


def byol_prediction_head(in_dim: int = 256, hidden_dim: int = 4096, out_dim: int = 256) -> MLPHead:
    """BYOL's predictor, same shape as its projector (Grill et al., NeurIPS 2020)."""
    return MLPHead(in_dim, hidden_dim, out_dim, num_layers=2, batch_norm=True)


class DINOHead(nn.Module):
    """DINO's head: MLP -> l2-normalise -> weight-normalised linear (Caron et al., ICCV 2021).

    Args:
        in_dim: backbone feature width.
        out_dim: number of prototypes K (the paper uses 65536).
        hidden_dim: width of the MLP's hidden layers (GELU, no BatchNorm).
        bottleneck_dim: width the MLP maps to before the normalisation.
        num_layers: linear layers of the MLP.
        norm_last_layer: fix the weight norm's magnitude g at 1, so that the last layer is
            a cosine similarity to K unit prototypes (the paper's choice for stability).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        self.mlp = MLPHead(
            in_dim, hidden_dim, bottleneck_dim, num_layers, batch_norm=False, activation=nn.GELU
        )
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> prototype logits (B, out_dim)."""
        return self.last_layer(F.normalize(self.mlp(features), dim=-1))
