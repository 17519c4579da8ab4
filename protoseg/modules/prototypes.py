"""Tissue prototypes (Pan et al., "Human-machine interactive tissue prototype learning for
label-efficient histopathology image segmentation", IPMI 2023): dense patch embeddings,
k-means prototypes, and the dense query of a named prototype dictionary.

One embedding serves both sides, so that what is clustered and what is queried are the same
thing: an SSL encoder's last feature map, computed densely (dilated to ``output_stride``) and
averaged over a ``window`` px square around each position, L2-normalised. The embedding of a
position is (nearly) the pooled embedding of the ``window`` px patch centred there.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import nn

from protoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from protoseg.io.prototype_files import EmbedderSettings
from protoseg.modules.backbones import load_backbone_weights


class DenseEmbedder(nn.Module):
    """Dense patch embeddings of images: (B, 3, H, W) -> (B, D, H / s, W / s), unit length.

    Args:
        backbone: a timm model name (the SSL encoder's, e.g. ``resnet18``).
        weights: the SSL ``encoder.ckpt`` (or any state dict of the model); None: random.
        output_stride: stride s of the embedding grid, px (8 or 16 dilate the last stages
            of a ResNet, as DeepLab does; 32 keeps them).
        window: side of the square the feature maps are averaged over, px (the patch size
            an embedding stands for; Proto2Seg used 128 px patches).
        levels: the feature levels embedded (timm ``out_indices``; a ResNet's 1-4 are its
            stages, stride 4 to 32): several make a hypercolumn, each level unit-normalised
            before they are joined, so that the fine levels' texture counts beside the last
            level's context. Default: the last level alone.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        weights: str | None = None,
        output_stride: int = 8,
        window: int = 96,
        levels: list[int] | None = None,
    ) -> None:
        super().__init__()
        if window < output_stride:
            raise ValueError(f"window ({window} px) must be >= output_stride ({output_stride})")
        # An absolute path: cluster and dictionary files name the encoder wherever they are read.
        weights = None if weights is None else str(Path(weights).resolve())
        self.window = window
        self.settings = EmbedderSettings(
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "backbone": backbone,
                "weights": weights,
                "output_stride": output_stride,
                "window": window,
                "levels": None if levels is None else [int(v) for v in levels],
            },
        )
        self.model = timm.create_model(
            backbone,
            pretrained=False,
            features_only=True,
            out_indices=tuple(levels or (-1,)),
            output_stride=output_stride,
        )
        if weights is not None:
            load_backbone_weights(self.model, weights)
        self.stride = max(int(r) for r in self.model.feature_info.reduction())
        self.dim = sum(int(c) for c in self.model.feature_info.channels())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, D, ceil(H / s), ceil(W / s)) embeddings."""
        maps = self.model(pad_to_stride(images, self.stride))
        size = maps[-1].shape[-2:]
        # Finer levels are averaged down to the coarsest level's grid.
        joined = torch.cat(
            [F.normalize(F.adaptive_avg_pool2d(m.float(), size), dim=1) for m in maps], 1
        )
        return F.normalize(window_mean(joined, self.window // self.stride), dim=1)


class ColourEmbedder(nn.Module):
    """Network-free patch embeddings, for a colour baseline of the prototype stage: the mean
    and standard deviation of the optical density (``-log10 I``, per RGB channel; stains
    absorb, glass does not) over a ``window`` px square, then a constant 1, as a unit vector
    (the constant keeps glass, of density near 0, apart from faint tissue).

    Args:
        window: side of the averaged square, px.
        stride: px between embeddings.
        mean: the normalisation mean the images come with, on [0, 1] RGB.
        std: the normalisation std.
    """

    def __init__(
        self,
        window: int = 96,
        stride: int = 8,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.window, self.stride, self.dim = window, stride, 7
        self.settings = EmbedderSettings(
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"window": window, "stride": stride, "mean": list(mean), "std": list(std)},
        )
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, 7, ceil(H / s), ceil(W / s)) unit vectors."""
        rgb = (images.float() * self.std + self.mean).clamp(0, 1)
        density = -torch.log10((rgb * 255 + 1) / 256)
        cells = F.avg_pool2d(pad_to_stride(density, self.stride), self.stride)
        squares = F.avg_pool2d(pad_to_stride(density**2, self.stride), self.stride)
        size = self.window // self.stride
        mean, mean_square = window_mean(cells, size), window_mean(squares, size)
        spread = (mean_square - mean**2).clamp_min(0).sqrt()
        constant = torch.ones_like(mean[:, :1])
        return F.normalize(torch.cat([mean, spread, constant], dim=1), dim=1)


def pad_to_stride(images: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, C, H, W) reflected on the bottom and right to multiples of ``stride`` (so that
    border cells see tissue, not zeros)."""
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % stride, (-width) % stride
    if not (pad_h or pad_w):
        return images
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(images, (0, pad_w, 0, pad_h), mode=mode)


def window_mean(cells: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of (B, C, h, w) over a square of about ``size`` cells centred on each cell (odd,
    so centred); partial squares at the border average what they hold."""
    if size <= 1:
        return cells
    kernel = size + 1 - size % 2
    return F.avg_pool2d(cells, kernel, stride=1, padding=kernel // 2, count_include_pad=False)


def build_embedder(settings: EmbedderSettings) -> nn.Module:
    """The embedder a cluster or dictionary file names (its class and arguments).

    Raises:
        ValueError: the class cannot be imported.
    """
    module_name, _, class_name = settings.class_path.rpartition(".")
    try:
        embedder_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"embedder {settings.class_path!r} cannot be imported: {error}") from error
    return embedder_class(**settings.init_args)


def grid_positions(shape: tuple[int, int], stride: int, step: int) -> np.ndarray:
    """(N, 2) int64 ``(row, col)`` embedding cells every ``step`` px of an (h, w) grid of
    ``stride`` px cells, starting half a step in."""
    every = max(1, round(step / stride))
    rows = np.arange(every // 2, shape[0], every)
    cols = np.arange(every // 2, shape[1], every)
    return np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1).reshape(-1, 2)


def kmeans_prototypes(
    embeddings: np.ndarray, clusters: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """k-means (scikit-learn, k-means++ with 4 restarts) of unit embeddings (N, D).

    Returns:
        (K, D) float32 unit centroids and (N,) int64 cluster of each embedding (its nearest
        centroid by cosine similarity).

    Raises:
        ValueError: fewer embeddings than clusters.
    """
    if len(embeddings) < clusters:
        raise ValueError(f"{len(embeddings)} patches cannot make {clusters} clusters")
    kmeans = KMeans(n_clusters=clusters, n_init=4, random_state=seed).fit(embeddings)
    centroids = kmeans.cluster_centers_.astype(np.float32)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return centroids, nearest_prototype(embeddings, centroids)[0]


def nearest_prototype(
    embeddings: np.ndarray, prototypes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Index (N,) int64 and cosine similarity (N,) float32 of the prototype (M, D) nearest
    each unit embedding (N, D)."""
    similarity = embeddings @ prototypes.T
    best = similarity.argmax(axis=1)
    return best.astype(np.int64), similarity[np.arange(len(best)), best].astype(np.float32)


def exemplars(
    embeddings: np.ndarray, assignment: np.ndarray, centroids: np.ndarray, count: int
) -> list[np.ndarray]:
    """Per cluster, the indices of its (at most ``count``) members nearest its centroid."""
    chosen = []
    for k, centroid in enumerate(centroids):
        members = np.flatnonzero(assignment == k)
        order = np.argsort(-(embeddings[members] @ centroid), kind="stable")
        chosen.append(members[order[:count]])
    return chosen


def query_classes(
    embeddings: torch.Tensor,
    prototypes: torch.Tensor,
    prototype_classes: torch.Tensor,
    threshold: float,
    size: tuple[int, int],
    stride: int,
    unsure: int,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class indices of every pixel from a dense query of named prototypes.

    Each prototype's cosine similarity map is upsampled (bilinearly) from the embedding grid
    to the image; a pixel takes the class of its most similar prototype, or ``unsure`` where
    that similarity is below ``threshold`` (or the prototype's class is ``unsure``).

    Args:
        embeddings: (B, D, h, w) unit embeddings (:class:`DenseEmbedder`).
        prototypes: (M, D) unit prototypes.
        prototype_classes: (M,) int64 class index of each.
        threshold: cosine similarity below which a pixel is unsure.
        size: (H, W) of the images (the grid covers them, padded to the stride).
        stride: px per embedding cell.
        unsure: the index of unsure pixels (255).
        allowed: (B, M) bool, the prototypes each image may take (e.g. those whose class its
            image-level label names, and the background's); None: all.

    Returns:
        (B, H, W) uint8 class indices.
    """
    similarity = torch.einsum("bdhw,md->bmhw", embeddings, prototypes.to(embeddings))
    # The grid covers the padded image: upsample by the stride, then crop to the image.
    padded = (embeddings.shape[-2] * stride, embeddings.shape[-1] * stride)
    similarity = F.interpolate(similarity, size=padded, mode="bilinear", align_corners=False)
    if allowed is not None:
        barred = ~allowed.to(similarity.device)[:, :, None, None]
        similarity = similarity.masked_fill(barred, float("-inf"))
    best, index = similarity[..., : size[0], : size[1]].max(dim=1)
    classes = prototype_classes.to(index.device)[index]
    classes = torch.where(best >= threshold, classes, torch.full_like(classes, unsure))
    return classes.to(torch.uint8)
