"""Batched view augmentations for self-supervised pretraining on H&E tiles.

Everything runs on the input tensor's device (call it after the batch reached the GPU) with
per-image random parameters: crops, flips, 90-degree turns, stain (HED) jitter, colour jitter,
grey and blur (kornia), then normalisation. Inputs are float RGB in [0, 1], (B, 3, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import kornia.augmentation as K
import torch
from kornia.geometry.transform import crop_and_resize
from torch import nn

from protoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD

# Ruifrok & Johnston (Anal. Quant. Cytol. Histol. 2001) stain vectors, rows H, E, DAB: optical
# density of one unit of each stain in R, G, B (the matrix scikit-image's rgb2hed inverts).
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)


def hed_jitter(
    images: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Rescales and shifts each stain's concentration (Tellez et al., IEEE TMI 2018).

    RGB -> optical density ``-ln(rgb)`` -> stains (H, E, DAB) by colour deconvolution ->
    ``alpha * stain + beta`` -> back to RGB. ``alpha = 1, beta = 0`` is the identity (up to
    ``eps``, the darkest value representable in optical density).

    Args:
        images: (B, 3, H, W) RGB in [0, 1].
        alpha: (B, 3) scale of the H, E and DAB concentrations.
        beta: (B, 3) shift of the concentrations, in optical-density units (natural log).
        eps: floor of the intensities before the logarithm.

    Returns:
        (B, 3, H, W) RGB in [0, 1].
    """
    density = -torch.log(images.clamp_min(eps))
    stains = torch.einsum("bchw,cs->bshw", density, HED_FROM_RGB.to(images))
    stains = stains * alpha[:, :, None, None] + beta[:, :, None, None]
    density = torch.einsum("bshw,sc->bchw", stains, RGB_FROM_HED.to(images))
    return torch.exp(-density).clamp(0.0, 1.0)


class RandomHEDJitter(nn.Module):
    """:func:`hed_jitter` with ``alpha ~ U(1 - s, 1 + s)``, ``beta ~ U(-s, s)`` per image and stain.

    Args:
        strength: s; 0 returns the input unchanged.
    """

    def __init__(self, strength: float = 0.05) -> None:
        super().__init__()
        self.strength = strength

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1]."""
        if self.strength == 0:
            return images
        shape = (images.shape[0], 3)
        alpha = 1 + (torch.rand(shape, device=images.device) * 2 - 1) * self.strength
        beta = (torch.rand(shape, device=images.device) * 2 - 1) * self.strength
        return hed_jitter(images, alpha.to(images.dtype), beta.to(images.dtype))


class RandomRot90(nn.Module):
    """Turns each square image by its own random multiple of 90 degrees (exact, no resampling)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, C, S, S)."""
        turns = torch.randint(4, (images.shape[0],), device=images.device)
        out = images.clone()
        for k in (1, 2, 3):
            chosen = turns == k
            out[chosen] = torch.rot90(images[chosen], k, dims=(2, 3))
        return out


def random_crop_boxes(
    images: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    magnifications: Sequence[float] = (1.0,),
) -> torch.Tensor:
    """Random crop boxes (B, 4, 2) of (x, y) corners (clockwise from top-left), one per image.

    The area is ``U(scale)`` times the image's, the aspect ratio log-uniform in ``ratio`` and
    both sides are divided by a factor drawn from ``magnifications``. Sides are clipped to the
    image (torchvision retries instead; clipping keeps the sampler batched).
    """
    batch, _, height, width = images.shape
    device = images.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, device=device)

    area = uniform(*scale) * height * width
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1])))
    factors = torch.tensor(magnifications, dtype=torch.float32, device=device)
    factor = factors[torch.randint(len(magnifications), (batch,), device=device)]
    box_w = (torch.sqrt(area * aspect) / factor).clamp(1, width)
    box_h = (torch.sqrt(area / aspect) / factor).clamp(1, height)
    x0 = torch.rand(batch, device=device) * (width - box_w)
    y0 = torch.rand(batch, device=device) * (height - box_h)
    # Corners are pixel centres (align_corners), so a box of w px spans x0 .. x0 + w - 1.
    x1, y1 = x0 + box_w - 1, y0 + box_h - 1
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return torch.stack([torch.stack(corner, dim=-1) for corner in corners], dim=1)


class PathologyViewAugment(nn.Module):
    """One random view per image: crop, geometry, stain and colour jitter, normalisation.

    Order: random resized crop -> flips -> 90-degree turns -> HED jitter -> colour jitter
    -> grey -> Gaussian blur -> ``(x - mean) / std``. Rotations by multiples of 90 degrees
    and vertical flips are label-preserving for tissue, unlike for natural images.

    Args:
        size: side of the square output view, px.
        scale: range of the crop's area as a fraction of the input's (before magnification).
        hflip: probability of a horizontal flip.
        vflip: probability of a vertical flip.
        rot90: turn each view by a random multiple of 90 degrees.
        hed_jitter: strength s of :class:`RandomHEDJitter` (0 disables).
        color_jitter: brightness, contrast, saturation and hue strengths (kornia ColorJitter).
        color_jitter_p: probability of the colour jitter.
        blur_p: probability of a Gaussian blur (kernel ~10% of ``size``, sigma in [0.1, 2]).
        grayscale_p: probability of turning the view grey.
        magnifications: multi-magnification views. Each view draws a factor f from this
            tuple and crops a region whose sides are 1/f those of the plain crop, resized to
            ``size``: f = 0.5 sees twice the field of view at half the resolution (as from a
            20x level of a 40x slide). Regions are clipped to the input, so give tiles of at
            least ``size / min(f)`` px and lower ``scale`` accordingly. (1.0,) disables it.
            Downscaling is bilinear without anti-aliasing.
        ratio: range of the crop's aspect ratio (log-uniform).
        mean: normalisation mean on [0, 1] RGB.
        std: normalisation std.
    """

    def __init__(
        self,
        size: int = 224,
        scale: tuple[float, float] = (0.2, 1.0),
        hflip: float = 0.5,
        vflip: float = 0.5,
        rot90: bool = True,
        hed_jitter: float = 0.05,
        color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.05),
        color_jitter_p: float = 0.8,
        blur_p: float = 0.5,
        grayscale_p: float = 0.0,
        magnifications: tuple[float, ...] = (1.0,),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if not magnifications or min(magnifications) <= 0:
            raise ValueError(f"magnifications must be positive factors, got {magnifications}")
        self.size = size
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.magnifications = tuple(magnifications)
        steps: list[nn.Module] = []
        if hflip > 0:
            steps.append(K.RandomHorizontalFlip(p=hflip))
        if vflip > 0:
            steps.append(K.RandomVerticalFlip(p=vflip))
        if rot90:
            steps.append(RandomRot90())
        if hed_jitter > 0:
            steps.append(RandomHEDJitter(hed_jitter))
        if color_jitter_p > 0:
            steps.append(K.ColorJitter(*color_jitter, p=color_jitter_p))
        if grayscale_p > 0:
            steps.append(K.RandomGrayscale(p=grayscale_p))
        if blur_p > 0:
            kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
            steps.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=blur_p))
        self.steps = nn.Sequential(*steps)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float RGB in [0, 1] -> normalised views (B, 3, size, size)."""
        boxes = random_crop_boxes(images, self.scale, self.ratio, self.magnifications)
        views = crop_and_resize(images, boxes, (self.size, self.size))
        views = self.steps(views).clamp(0.0, 1.0)
        return (views - self.mean.to(views)) / self.std.to(views)


class MultiCropAugment(nn.Module):
    """DINO's multi-crop (Caron et al., 2021): 2 global views and ``num_local`` small ones.

    Both kinds share the geometric and photometric settings of :class:`PathologyViewAugment`
    (see there); they differ in size and crop scale.

    Args:
        global_size: side of the 2 global views, px.
        local_size: side of the local views, px.
        num_local: number of local views (0 for global views only).
        global_scale: crop area range of the global views.
        local_scale: crop area range of the local views.
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        num_local: int = 6,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        hflip: float = 0.5,
        vflip: float = 0.5,
        rot90: bool = True,
        hed_jitter: float = 0.05,
        color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.05),
        color_jitter_p: float = 0.8,
        blur_p: float = 0.5,
        grayscale_p: float = 0.0,
        magnifications: tuple[float, ...] = (1.0,),
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        shared = dict(
            hflip=hflip,
            vflip=vflip,
            rot90=rot90,
            hed_jitter=hed_jitter,
            color_jitter=color_jitter,
            color_jitter_p=color_jitter_p,
            blur_p=blur_p,
            grayscale_p=grayscale_p,
            magnifications=magnifications,
            mean=mean,
            std=std,
        )
        self.num_local = num_local
        self.global_view = PathologyViewAugment(global_size, global_scale, **shared)
        self.local_view = PathologyViewAugment(local_size, local_scale, **shared)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> [2 x (B, 3, G, G), num_local x (B, 3, L, L)]."""
        # One batched call per kind; every copy of an image still draws its own parameters.
        views = list(self.global_view(images.repeat(2, 1, 1, 1)).chunk(2))
        if self.num_local > 0:
            local = self.local_view(images.repeat(self.num_local, 1, 1, 1))
            views += list(local.chunk(self.num_local))
        return views
