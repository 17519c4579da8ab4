"""From class activation maps to pseudo masks: CAM masks, SAM prompts, EPLC-SAM's filter.

Class maps hold class *indices*: ``0 .. K-1`` the tissue classes, ``K`` the background (glass),
``ignore_index`` (255) pixels left unsure (see :mod:`protoseg.io.class_maps`).

The CAM + SAM pseudo mask (EP-SAM / EPLC-SAM, weakly supervised segmentation of breast cancer
tissue): each class's CAM mask gives prompts (boxes of its connected regions and/or points
drawn in proportion to the CAM inside them), Segment Anything answers each prompt with a
mask, and a SAM mask is kept only where it agrees with the CAM (at least ``min_overlap`` of
the SAM mask lies in that class's CAM mask). Pixels that two classes' kept masks claim go to
the class of higher CAM; pixels no kept mask covers keep the CAM's class, or stay unsure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from protoseg.modules.sam import EmbeddingPredictor, SamPredictor, tile_windows

IGNORE = 255


def cam_class_map(
    cams: np.ndarray,
    present: np.ndarray,
    background: np.ndarray,
    min_score: float = 0.1,
    min_margin: float = 0.0,
    ignore_index: int = IGNORE,
) -> np.ndarray:
    """The CAM pseudo mask: each tissue pixel takes the class of highest CAM among ``present``.

    Args:
        cams: (K, H, W) normalised class maps (each map's maximum 1).
        present: (K,) bool, the image's classes (its image-level label).
        background: (H, W) bool, glass (index K).
        min_score: pixels whose best CAM is lower are unsure (``ignore_index``); single-class
            images take their class everywhere on tissue.
        min_margin: pixels whose best CAM leads the second by less are unsure.

    Returns:
        (H, W) uint8 class indices.
    """
    num_classes = cams.shape[0]
    present = np.asarray(present, bool)
    classes = np.full(cams.shape[1:], ignore_index, np.uint8)
    if present.sum() == 1:
        classes[:] = int(np.flatnonzero(present)[0])
    elif present.any():
        scores = np.where(present[:, None, None], cams, -1.0)
        order = np.sort(scores, axis=0)
        best, second = order[-1], order[-2]
        sure = (best >= min_score) & (best - second >= min_margin)
        classes[sure] = scores.argmax(axis=0).astype(np.uint8)[sure]
    classes[background] = num_classes
    return classes


def sample_points(
    cam: np.ndarray, mask: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """Up to ``count`` distinct (x, y) pixels of ``mask`` drawn with probability ∝ ``cam``.

    Returns:
        (n, 2) float32 points, n = min(count, pixels of the mask with cam > 0).
    """
    ys, xs = np.nonzero(mask & (cam > 0))
    if len(ys) == 0 or count <= 0:
        return np.zeros((0, 2), np.float32)
    weights = cam[ys, xs].astype(np.float64)
    picked = rng.choice(len(ys), size=min(count, len(ys)), replace=False, p=weights / weights.sum())
    return np.stack([xs[picked], ys[picked]], axis=1).astype(np.float32)


def region_boxes(mask: np.ndarray, min_area: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Connected regions (8-connected) of a mask of at least ``min_area`` px.

    Returns:
        Boxes (n, 4) float32 x0, y0, x1, y1 (inclusive pixel edges) and the (H, W) int32
        region labels (0 outside; regions numbered 1..n as the boxes).
    """
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return np.zeros((0, 4), np.float32), labels
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    keep = np.flatnonzero(areas >= min_area) + 1
    relabel = np.zeros(count + 1, np.int32)
    relabel[keep] = np.arange(1, len(keep) + 1)
    labels = relabel[labels]
    boxes = [
        (s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1)
        for s in ndimage.find_objects(labels)
        if s is not None
    ]
    return np.asarray(boxes, np.float32).reshape(-1, 4), labels


def agrees(sam_mask: np.ndarray, cam_mask: np.ndarray, min_overlap: float) -> bool:
    """EPLC-SAM's filter: whether at least ``min_overlap`` of a SAM mask lies in the CAM mask
    (an empty SAM mask never agrees)."""
    area = int(sam_mask.sum())
    return area > 0 and (sam_mask & cam_mask).sum() >= min_overlap * area


@dataclass
class PromptSettings:
    """How SAM is prompted and its answers filtered.

    Attributes:
        prompt: ``box`` (one box per connected CAM region; LiteMedSAM was trained on boxes),
            ``points`` (positive points drawn ∝ CAM in the region) or ``box+points``.
        points_per_prompt: points per region (EPLC-SAM: 50 per CAM).
        min_region: CAM regions smaller than this (px, at the tile's resolution) get no prompt.
        min_overlap: EPLC-SAM's agreement threshold (0.9).
        mask_threshold: SAM probability above which a pixel is in its mask.
        tile: side of the image tiles SAM sees, px of the image (each is resized to SAM's
            input); 0 = the whole image as one tile.
        overlap: px shared by neighbouring tiles.
    """

    prompt: Literal["box", "points", "box+points"] = "box"
    points_per_prompt: int = 50
    min_region: int = 64
    min_overlap: float = 0.9
    mask_threshold: float = 0.5
    tile: int = 256
    overlap: int = 32


def sam_class_masks(
    predictor: SamPredictor | EmbeddingPredictor,
    image: np.ndarray | None,
    cams: np.ndarray,
    cam_classes: np.ndarray,
    present: np.ndarray,
    settings: PromptSettings,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, int]]:
    """Per class, the union of the SAM masks that agree with its CAM mask.

    Args:
        predictor: answers prompts on one tile at a time: a :class:`SamPredictor` (encodes
            each tile of ``image``) or an
            :class:`~protoseg.modules.sam.EmbeddingPredictor` (decodes a tile's cells of
            embeddings computed before; ``image`` may then be None).
        image: (H, W, 3) uint8.
        cams: (K, H, W) normalised class maps.
        cam_classes: (H, W) the CAM pseudo mask (:func:`cam_class_map`); class k's CAM mask is
            ``cam_classes == k``.
        present: (K,) bool, the classes prompted.

    Returns:
        (K, H, W) bool kept masks, and counts: ``prompts`` and ``kept`` masks.
    """
    num_classes, height, width = cams.shape
    kept = np.zeros((num_classes, height, width), bool)
    counts = {"prompts": 0, "kept": 0}
    tile = settings.tile or max(height, width)
    for y, x in tile_windows(height, width, tile, min(settings.overlap, tile - 1)):
        window = (slice(y, y + tile), slice(x, x + tile))
        encoded = False
        for k in np.flatnonzero(present):
            cam_mask = cam_classes[window] == k
            boxes, regions = region_boxes(cam_mask, settings.min_region)
            if len(boxes) == 0:
                continue
            if not encoded:  # tiles without any prompt are never encoded
                predictor.set_window(image, window)
                encoded = True
            points = None
            if settings.prompt != "box":
                drawn = [
                    sample_points(
                        cams[k][window], regions == i + 1, settings.points_per_prompt, rng
                    )
                    for i in range(len(boxes))
                ]
                points = _pad_points(drawn)
            masks, _ = predictor.predict(
                boxes=None if settings.prompt == "points" else boxes, points=points
            )
            counts["prompts"] += len(masks)
            for probs in masks:
                mask = probs > settings.mask_threshold
                if agrees(mask, cam_mask, settings.min_overlap):
                    kept[k][window] |= mask
                    counts["kept"] += 1
    return kept, counts


def _pad_points(drawn: list[np.ndarray]) -> np.ndarray:
    """Point sets of unequal size as one (N, P, 2) array, short sets repeating their points.

    Every region with a box has at least one pixel of positive CAM, so no set is empty.
    """
    most = max(len(points) for points in drawn)
    return np.stack([np.resize(points, (most, 2)) for points in drawn]).astype(np.float32)


def combine_sam_masks(
    kept: np.ndarray,
    cams: np.ndarray,
    cam_classes: np.ndarray,
    uncovered: Literal["cam", "ignore"] = "cam",
    ignore_index: int = IGNORE,
) -> np.ndarray:
    """The CAM + SAM pseudo mask.

    Pixels in one class's kept SAM masks take that class; pixels claimed by several take the
    one of highest CAM among them; the rest keep the CAM pseudo mask's index
    (``uncovered="cam"``) or become unsure (``"ignore"``, EPLC-SAM's pseudo masks hold SAM's
    masks only). Background (glass) of the CAM pseudo mask stays background.

    Args:
        kept: (K, H, W) bool, from :func:`sam_class_masks`.
        cams: (K, H, W) normalised class maps.
        cam_classes: (H, W) the CAM pseudo mask.

    Returns:
        (H, W) uint8 class indices.
    """
    num_classes = kept.shape[0]
    claimed = kept.any(axis=0)
    best = np.where(kept, cams, -1.0).argmax(axis=0).astype(np.uint8)
    if uncovered == "cam":
        classes = cam_classes.copy()
    else:
        classes = np.full(cam_classes.shape, ignore_index, np.uint8)
    classes[claimed] = best[claimed]
    classes[cam_classes == num_classes] = num_classes
    return classes
