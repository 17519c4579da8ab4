"""Smoke test of benchmarks/ssl_bench.py's timing with our implementation only (no lightly)."""

from __future__ import annotations

import torch

from benchmarks.ssl_bench import (
    TileDataset,
    load_tiles,
    measure,
    our_module,
    our_step,
    tile_loader,
)


def test_our_throughput_smoke() -> None:
    tiles = load_tiles(None, count=6, size=40)
    assert tiles.shape == (6, 40, 40, 3) and tiles.dtype.name == "uint8"
    small_heads = [
        "--model.init_args.projection_hidden_dim=32",
        "--model.init_args.projection_dim=8",
    ]
    module = our_module("simclr", 32, backbone="test_resnet", extra=small_heads)
    before = next(module.backbone.parameters()).clone()
    loader = tile_loader(TileDataset(tiles), batch_size=4, batches=2, workers=0)
    cpu = torch.device("cpu")
    figures = measure(our_step(module, cpu, 1e-3), loader, warmup=1, steps=1, device=cpu)
    assert set(figures) == {"images_per_s", "seconds_per_step"}
    assert figures["images_per_s"] > 0 and figures["seconds_per_step"] > 0
    # Two optimizer steps ran on the module's own parameters.
    assert not torch.equal(next(module.backbone.parameters()), before)
