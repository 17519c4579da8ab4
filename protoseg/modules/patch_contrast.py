"""Patch statistics, entropy-based patch sampling and the patch-contrastive objective.

Pure functions behind :mod:`protoseg.lightning_modules.patch_contrast` (Boserup & Selvan,
"Efficient Self-Supervision using Patch-based Contrastive Learning for Histopathology Image
Segmentation", NLDL 2023). A *patch* is summarised by the mean class distribution of the
confidence map over it; *information separation* between two patches is the Jensen-Shannon
divergence of those distributions (nats, at most log 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def pixel_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each pixel's class distribution: (B, K, H, W) -> (B, H, W)."""
    return -(probs * torch.log(probs.clamp_min(EPS))).sum(dim=1)


def patch_mean(maps: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Averages (B, C, H, W) over non-overlapping ``patch_size`` squares -> (B, C, N).

    Patches are laid on a grid from the top-left corner; a remainder narrower than a patch at
    the bottom/right is left out. N = (H // patch_size) * (W // patch_size).
    """
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if min(maps.shape[-2:]) < patch_size:
        raise ValueError(f"maps {tuple(maps.shape[-2:])} are smaller than a {patch_size} px patch")
    pooled = F.avg_pool2d(maps, patch_size, stride=patch_size)
    return pooled.flatten(2)


def sample_patches_by_entropy(
    entropy: torch.Tensor,
    num_samples: int,
    temperature: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draws patch indices per image, favouring patches of low average entropy.

    Patch i of an image is drawn (without replacement) with probability proportional to
    ``exp(-entropy_i / temperature)``: confident patches, where the network already believes
    it sees one class, are the reliable pairs to contrast; ``temperature = inf`` is uniform.

    Args:
        entropy: average entropy of each patch, (B, N).
        num_samples: patches drawn per image (at most N).
        temperature: > 0; small values concentrate on the most confident patches.
        generator: optional random generator.

    Returns:
        Indices (B, num_samples) int64 into the N patches.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    count = entropy.shape[1]
    if not 1 <= num_samples <= count:
        raise ValueError(f"num_samples must be in [1, {count}], got {num_samples}")
    logits = -entropy.detach().float() / temperature
    weights = torch.softmax(logits - logits.amax(dim=1, keepdim=True), dim=1)
    return torch.multinomial(weights, num_samples, replacement=False, generator=generator)


def gather_patches(patches: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Selects patches (B, K, N) at indices (B, S) -> (B * S, K)."""
    expanded = indices.unsqueeze(1).expand(-1, patches.shape[1], -1)
    return patches.gather(2, expanded).permute(0, 2, 1).reshape(-1, patches.shape[1])


def mutual_information_loss(
    view_a: torch.Tensor, view_b: torch.Tensor, marginal_weight: float = 1.0
) -> torch.Tensor:
    """Negative mutual information between paired patch distributions (IIC form).

    The joint J = sym(mean_i a_i b_i^T) over M positive pairs (the same patch seen in two
    views) gives ``I = sum J (log J - w log Ja - w log Jb)`` with marginals Ja, Jb and
    ``w = marginal_weight``. It is high when each pair agrees (small separation within
    positives) while different patches fall in different classes (large separation between
    positive-negative pairs, the product of the marginals); ``w > 1`` favours balanced classes.

    Args:
        view_a: (M, K) class distributions of the patches in view a.
        view_b: (M, K) the same patches in view b.
        marginal_weight: weight of the marginal entropies.

    Returns:
        Scalar loss ``-I`` (nats).
    """
    if view_a.shape != view_b.shape or view_a.ndim != 2:
        raise ValueError(f"expected two (M, K) tensors, got {view_a.shape} and {view_b.shape}")
    joint = view_a.t() @ view_b / view_a.shape[0]
    joint = ((joint + joint.t()) / 2).clamp_min(EPS)
    joint = joint / joint.sum()
    marginal_a = joint.sum(dim=1, keepdim=True)
    marginal_b = joint.sum(dim=0, keepdim=True)
    log_ratio = (
        torch.log(joint)
        - marginal_weight * torch.log(marginal_a)
        - marginal_weight * torch.log(marginal_b)
    )
    return -(joint * log_ratio).sum()


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between rows of (M, K) distributions -> (M,)."""
    m = (p + q) / 2

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * (torch.log(a.clamp_min(EPS)) - torch.log(b.clamp_min(EPS)))).sum(dim=1)

    return (kl(p, m) + kl(q, m)) / 2


def information_separation(
    view_a: torch.Tensor, view_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean separation within positive pairs and between positive-negative pairs.

    Positives: patch i in view a with patch i in view b. Negatives: patch i in view a with
    patch i+1 (cyclically) in view b, a different patch of the batch. Both are
    Jensen-Shannon divergences in nats; the convergence criterion wants the first small and
    the second large.

    Args:
        view_a: (M, K) patch class distributions, M >= 2.
        view_b: (M, K) the same patches in the other view.

    Returns:
        (positive, negative) scalar tensors.
    """
    if view_a.shape[0] < 2:
        raise ValueError("need at least two patches to form a negative pair")
    positive = js_divergence(view_a, view_b).mean()
    negative = js_divergence(view_a, view_b.roll(-1, dims=0)).mean()
    return positive, negative


def separations_converged(
    history: torch.Tensor, positive_max: float, negative_min: float, tolerance: float
) -> bool:
    """The convergence criterion: separations in range and no longer moving, over a window.

    ``history`` holds the (smoothed) separations of the last steps, oldest first. Training
    has converged when, at every one of those steps, the separation within positives was
    below ``positive_max`` and the one between positive-negative pairs above
    ``negative_min``, and the latter gained less than ``tolerance`` across the window: the
    pairs are as far apart as the network will get them.

    Args:
        history: (W, 2) rows of (positive, negative) separations, W >= 2.
        positive_max: largest separation within positives that counts as small (nats).
        negative_min: smallest separation between pairs that counts as large (nats).
        tolerance: most the between-pairs separation may still gain over the window (nats).
    """
    if history.ndim != 2 or history.shape[1] != 2 or history.shape[0] < 2:
        raise ValueError(f"expected (W >= 2, 2) separations, got {tuple(history.shape)}")
    positive, negative = history[:, 0], history[:, 1]
    in_range = bool((positive < positive_max).all() and (negative > negative_min).all())
    return in_range and float(negative[-1] - negative[0]) < tolerance
