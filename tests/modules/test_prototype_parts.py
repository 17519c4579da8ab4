"""Prototype parts: dense embeddings, k-means prototypes, exemplars and the dense query."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protoseg.modules.backbones import TimmBackbone, save_encoder_checkpoint
from protoseg.modules.prototypes import (
    ColourEmbedder,
    DenseEmbedder,
    build_embedder,
    exemplars,
    grid_positions,
    kmeans_prototypes,
    nearest_prototype,
    query_classes,
)


def test_dense_embedder_shapes_units_and_window(tmp_path: Path) -> None:
    """Unit vectors on a stride-8 grid covering the image; each the mean of the unit feature
    vectors over the window's cells (an independent avg over a slice), then normalised."""
    weights = save_encoder_checkpoint(TimmBackbone("resnet18"), tmp_path / "encoder.ckpt")
    embedder = DenseEmbedder("resnet18", str(weights), output_stride=8, window=24).eval()
    assert embedder.settings.init_args["weights"] == str(weights.resolve())
    images = torch.randn(1, 3, 50, 61)
    with torch.no_grad():
        out = embedder(images)
        padded = F.pad(images, (0, 3, 0, 6), mode="reflect")
        raw = embedder.model(padded)[-1]
    assert out.shape == (1, 512, 7, 8)
    assert torch.allclose(out.norm(dim=1), torch.ones(1, 7, 8), atol=1e-5)
    # window 24 px = 3 cells: cell (3, 4) is the mean of cells 2..4 x 3..5.
    unit = F.normalize(raw[0], dim=0)
    expected = F.normalize(unit[:, 2:5, 3:6].mean(dim=(1, 2)), dim=0)
    assert torch.allclose(out[0, :, 3, 4], expected, atol=1e-5)


def test_grid_positions_every_step() -> None:
    cells = grid_positions((8, 5), stride=8, step=32)
    assert cells.tolist() == [[2, 2], [6, 2]]


def test_kmeans_finds_separated_groups_and_exemplars() -> None:
    rng = np.random.default_rng(0)
    directions = np.eye(4, dtype=np.float32)[:3]
    points = np.concatenate([d + rng.normal(0, 0.05, (20, 4)) for d in directions])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    centroids, assignment = kmeans_prototypes(points.astype(np.float32), 3, seed=0)
    groups = [set(assignment[i * 20 : (i + 1) * 20].tolist()) for i in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    chosen = exemplars(points, assignment, centroids, 5)
    for k, members in enumerate(chosen):
        similarity = points @ centroids[k]
        inside = np.flatnonzero(assignment == k)
        best = inside[np.argsort(-similarity[inside])[:5]]
        assert members.tolist() == best.tolist()
    with pytest.raises(ValueError, match="cannot make"):
        kmeans_prototypes(points[:2], 3)


def test_nearest_prototype_is_the_cosine_argmax() -> None:
    embeddings = np.array([[1, 0], [0.6, 0.8], [0, 1]], np.float32)
    prototypes = np.array([[1, 0], [0, 1]], np.float32)
    index, similarity = nearest_prototype(embeddings, prototypes)
    assert index.tolist() == [0, 1, 1] and np.allclose(similarity, [1, 0.8, 1])


def test_query_thresholds_ignores_and_upsamples() -> None:
    """2 x 2 cells of 4 px: tumor, stroma, an ignore prototype's cell and a cell far from every
    prototype; pixels take their cell's answer at the cell centres."""
    prototypes = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    classes_of = torch.tensor([0, 1, 255])
    cells = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]], [[0, 0, 1.0], [0.5, 0.5, -0.707]]]).permute(
        2, 0, 1
    )[None]
    out = query_classes(cells, prototypes, classes_of, 0.9, (7, 8), 4, 255)
    assert out.shape == (1, 7, 8) and out.dtype == torch.uint8
    assert out[0, 1, 1] == 0 and out[0, 1, 6] == 1
    assert out[0, 6, 1] == 255  # nearest the ignore prototype
    assert out[0, 6, 6] == 255  # similarity 0.5 < 0.9


def test_colour_embedder_is_optical_density_mean_and_spread() -> None:
    """Two halves of flat colours, 16 px windows: a cell deep in a half is that colour's
    optical density with no spread; a cell on the edge mixes both (independent numpy)."""
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    rgb = np.zeros((32, 32, 3))
    rgb[:, :16] = (200, 100, 150)
    rgb[:, 16:] = (255, 255, 255)
    images = torch.from_numpy(((rgb / 255 - mean) / std).transpose(2, 0, 1)[None]).float()
    embedder = ColourEmbedder(window=16, stride=4, mean=mean, std=std)
    out = embedder(images)[0]
    assert out.shape == (7, 8, 8)
    density = -np.log10((rgb + 1) / 256)

    def expected(rows: slice, cols: slice) -> np.ndarray:
        region = density[rows, cols].reshape(-1, 3)
        vector = np.concatenate([region.mean(0), region.std(0), [1.0]])
        return vector / np.linalg.norm(vector)

    # cell (4, 1) covers px 16-19 x 4-7; its 5 x 5-cell window px 8-27 x 0-15 (clipped).
    assert np.allclose(out[:, 4, 1].numpy(), expected(slice(8, 28), slice(0, 16)), atol=1e-4)
    assert np.allclose(out[:, 4, 4].numpy(), expected(slice(8, 28), slice(8, 28)), atol=1e-4)
    assert embedder.settings.class_path == "protoseg.modules.prototypes.ColourEmbedder"
    rebuilt = build_embedder(embedder.settings)
    assert torch.allclose(rebuilt(images), embedder(images))
