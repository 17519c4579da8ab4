"""Prior self-activation maps and semantic clustering: the pure functions of the PSM stage.

Chen et al., "Exploring Unsupervised Cell Recognition with Prior Self-activation Maps",
MICCAI 2023 (arXiv 2308.11144). The stage itself is
:class:`protoseg.lightning_modules.psm.PSMModule`; every choice where the paper is vague is
listed in that module's docstring. Here:

- :func:`activation_from_gradients` / :func:`gradient_activation_map`: the gradient of a
  self-supervised loss with respect to shallow feature maps, aggregated into one map per
  image, (B, 1, H, W) in [0, 1];
- :func:`pixel_cues`, :func:`cluster_pixels`, :func:`foreground_cluster` and
  :func:`psm_binary_mask`: k-means over colour (stain density) and activation cues, and the
  choice of the cell cluster, giving binary masks; :func:`colour_prior_mask`, the authors'
  own clustering (their code, not the paper, fixes it);
- :func:`cell_points` and :func:`classify_cells`: instances to points, and points to cell
  classes by a second k-means on per-cell DAB density (multi-class detection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from sklearn.cluster import KMeans

from protoseg.modules.pseudo_masks import hematoxylin_density, stain_densities

AggregationMode = Literal["gradcam", "elementwise"]
Cue = Literal["hematoxylin", "density"]
Clustering = Literal["cue", "colour_prior"]
EPS = 1e-8


def normalize_per_image(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scales each image of (B, C, H, W) to [0, 1]; a constant image becomes 0."""
    flat = maps.flatten(1)
    low = flat.amin(dim=1).view(-1, 1, 1, 1)
    high = flat.amax(dim=1).view(-1, 1, 1, 1)
    return (maps - low) / (high - low).clamp_min(EPS)


def activation_from_gradients(
    features: Sequence[torch.Tensor],
    gradients: Sequence[torch.Tensor],
    size: tuple[int, int],
    mode: AggregationMode = "elementwise",
) -> torch.Tensor:
    """Aggregates feature maps and their gradients into one activation map per image.

    Per layer l with activations A (B, C, h, w) and gradients G of the same shape:

    - ``gradcam``: ``ReLU(sum_c mean_hw(G_c) * A_c)`` (Grad-CAM's channel weights);
    - ``elementwise``: ``sum_c |G_c * A_c|`` (each pixel's own first-order contribution,
      which keeps the fine spatial detail shallow layers carry).

    Each layer's map is upsampled (bilinear) to ``size`` and min-max normalised per image, so
    that layers of different scale weigh equally; the sum over layers is normalised again.

    Returns:
        (B, 1, H, W) float in [0, 1].
    """
    if len(features) != len(gradients) or not features:
        raise ValueError(f"need matching feature and gradient lists, got {len(features)}")
    total = None
    for activation, gradient in zip(features, gradients, strict=True):
        if activation.shape != gradient.shape:
            raise ValueError(f"feature {activation.shape} and gradient {gradient.shape} differ")
        if mode == "gradcam":
            weights = gradient.mean(dim=(2, 3), keepdim=True)
            layer = F.relu((weights * activation).sum(dim=1, keepdim=True))
        elif mode == "elementwise":
            layer = (gradient * activation).abs().sum(dim=1, keepdim=True)
        else:
            raise ValueError(f"mode must be 'gradcam' or 'elementwise', got {mode!r}")
        layer = F.interpolate(layer.float(), size=size, mode="bilinear", align_corners=False)
        layer = normalize_per_image(layer)
        total = layer if total is None else total + layer
    assert total is not None
    return normalize_per_image(total.detach())


def gradient_activation_map(
    features: Sequence[torch.Tensor],
    loss: torch.Tensor,
    size: tuple[int, int],
    mode: AggregationMode = "elementwise",
) -> torch.Tensor:
    """:func:`activation_from_gradients` with the gradients of ``loss`` w.r.t. ``features``.

    ``loss`` must be a sum (not a mean mixing images through BatchNorm statistics) of
    per-image terms for the maps to be independent; the scale does not matter (normalised).

    Returns:
        (B, 1, H, W) float in [0, 1], detached.
    """
    gradients = torch.autograd.grad(loss, list(features), allow_unused=False)
    return activation_from_gradients(features, gradients, size, mode)


def _zscore(values: np.ndarray) -> np.ndarray:
    return (values - values.mean()) / (values.std() + EPS)


def cell_cue(image: np.ndarray, cue: Cue = "hematoxylin") -> np.ndarray:
    """The colour evidence of cells (H, W): hematoxylin density (H&E nuclei), or total
    optical density (IHC, where positive nuclei are brown and negative ones blue)."""
    if cue == "hematoxylin":
        return hematoxylin_density(image)
    if cue == "density":
        return -np.log(np.clip(image.astype(np.float64), 1.0, 255.0) / 255.0).sum(axis=-1)
    raise ValueError(f"cue must be 'hematoxylin' or 'density', got {cue!r}")


def smoothed_cell_cue(
    image: np.ndarray, cue: Cue = "hematoxylin", sigma: float = 1.0
) -> np.ndarray:
    """:func:`cell_cue` smoothed by a Gaussian of ``sigma`` px (none when 0): (H, W)."""
    colour = cell_cue(image, cue)
    return ndi.gaussian_filter(colour, sigma) if sigma > 0 else colour


def pixel_cues(
    colour: np.ndarray, activation: np.ndarray, activation_weight: float = 1.0
) -> np.ndarray:
    """Per-pixel clustering features (H * W, 2): colour cue and activation, z-scored per image.

    ``colour`` is the (H, W) colour cue, lightly smoothed (:func:`smoothed_cell_cue`) to quiet
    chromatin texture that would otherwise pepper the masks. The polarity of a
    self-activation map is not fixed by the self-supervised objective (a network may light up
    nuclei or the tissue around them; on MoNuSeg we saw both for different random inits), so
    the activation is negated when it anti-correlates with the colour cue.
    ``activation_weight`` scales the activation column, i.e. its say in the Euclidean k-means
    distance.
    """
    if activation.shape != colour.shape:
        raise ValueError(f"activation {activation.shape} and colour cue {colour.shape} differ")
    colour = _zscore(colour)
    active = _zscore(activation.astype(np.float64))
    if np.mean(colour * active) < 0:
        active = -active
    columns = [colour, activation_weight * active]
    return np.stack([c.ravel() for c in columns], axis=1)


def cluster_pixels(
    cues: np.ndarray, num_clusters: int, max_samples: int = 20000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """k-means (scikit-learn) on a random subsample of pixels, then every pixel assigned.

    Returns:
        Cluster ids (N,) int64 and cluster centres (K, F).
    """
    if num_clusters < 2:
        raise ValueError(f"num_clusters must be >= 2, got {num_clusters}")
    rng = np.random.default_rng(seed)
    sample = cues if len(cues) <= max_samples else cues[rng.choice(len(cues), max_samples, False)]
    kmeans = KMeans(num_clusters, n_init=3, random_state=seed).fit(sample)
    return kmeans.predict(cues).astype(np.int64), kmeans.cluster_centers_


def foreground_cluster(centers: np.ndarray) -> int:
    """The cell cluster: the largest sum of the (z-scored) colour and activation cues."""
    return int(np.argmax(centers.sum(axis=1)))


def psm_binary_mask(
    colour: np.ndarray,
    activation: np.ndarray,
    num_clusters: int = 3,
    activation_weight: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Semantic clustering of one image into a cell/background mask (H, W) bool.

    Args:
        colour: (H, W) smoothed colour cue of the image (:func:`smoothed_cell_cue`).
        activation: (H, W) self-activation map of the same image.
    """
    cues = pixel_cues(colour, activation, activation_weight)
    labels, centers = cluster_pixels(cues, num_clusters, seed=seed)
    return (labels == foreground_cluster(centers)).reshape(colour.shape)


def jet_bgr(values: np.ndarray) -> np.ndarray:
    """The jet colour map of values in [0, 1], (H, W) -> (H, W, 3) in [0, 1], channels in
    OpenCV's blue-green-red order (``cv2.applyColorMap(..., COLORMAP_JET)``, whose table
    follows these piecewise-linear ramps to within 1/255): low values blue, high red."""
    v = np.clip(values.astype(np.float64), 0.0, 1.0)
    ramps = [np.clip(1.5 - np.abs(4.0 * v - centre), 0.0, 1.0) for centre in (1.0, 2.0, 3.0)]
    return np.stack(ramps, axis=-1)


def colour_prior_mask(
    image: np.ndarray, activation: np.ndarray, num_clusters: int = 3, seed: int = 0
) -> np.ndarray:
    """The PSM authors' semantic clustering of one image into a cell mask (H, W) bool.

    Their code (``sgg`` in the released repository) draws the self-activation map in the jet
    colour map, adds the RGB image (both on [0, 1]), clusters the pixels' three sums by
    k-means (k = 3) and keeps the cluster lowest in the sum of its first two channels. The
    map is in OpenCV's BGR order and the image in RGB, so that sum reads jet blue + jet green
    + image red + image green: high activation (jet red) on dark, red- and green-absorbing
    (hematoxylin) pixels.

    Args:
        image: (H, W, 3) uint8 RGB.
        activation: (H, W) self-activation map in [0, 1].
    """
    if activation.shape != image.shape[:2]:
        raise ValueError(f"activation {activation.shape} and image {image.shape} differ")
    summed = jet_bgr(activation) + image.astype(np.float64) / 255.0
    labels, centers = cluster_pixels(summed.reshape(-1, 3), num_clusters, seed=seed)
    cell = int(np.argmin(centers[:, 0] + centers[:, 1]))
    return (labels == cell).reshape(activation.shape)


def cell_points(instances: np.ndarray) -> np.ndarray:
    """Centroids (N, 2) float64 as (x, y) of instances 1..N of an (H, W) map (ids in order)."""
    ids = np.unique(instances)
    ids = ids[ids > 0]
    if ids.size == 0:
        return np.zeros((0, 2))
    centres = ndi.center_of_mass(np.ones(instances.shape), instances, ids)
    return np.asarray(centres, dtype=np.float64)[:, ::-1].copy()


def classify_cells(
    image: np.ndarray, instances: np.ndarray, num_classes: int, seed: int = 0
) -> np.ndarray:
    """Cell classes (N,) int64 for instances 1..N, by k-means on each cell's mean DAB density.

    Ki-67 positivity is DAB staining, so the classes are cut along DAB alone and numbered by
    ascending DAB: in IHC, class 0 is the negative (blue) cells and class
    ``num_classes - 1`` the most DAB-positive (brown) ones. A k-means on the hematoxylin,
    eosin and DAB densities together (z-scored) splits along the counterstain as readily: on
    the real BCData sample image it put about half the brown cells in the negative class
    (docs/nuclei.md, "BCData").
    """
    ids = np.unique(instances)
    ids = ids[ids > 0]
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if ids.size == 0 or num_classes == 1:
        return np.zeros(ids.size, dtype=np.int64)
    dab = np.asarray(ndi.mean(stain_densities(image)[..., 2], instances, ids)).reshape(-1, 1)
    count = min(num_classes, ids.size)
    kmeans = KMeans(count, n_init=3, random_state=seed).fit(dab)
    rank = np.empty(count, dtype=np.int64)
    rank[np.argsort(kmeans.cluster_centers_[:, 0])] = np.arange(count)
    return rank[kmeans.labels_]
