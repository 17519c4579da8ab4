"""From per-pixel class probabilities to nuclei instance maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import regionprops
from skimage.morphology import disk, remove_small_objects
from skimage.segmentation import relabel_sequential, watershed

from protoseg.data.targets import BACKGROUND, INSIDE
from protoseg.modules.centre_votes import votes_inside


def three_class_to_instances(
    probs: np.ndarray,
    marker_threshold: float = 0.5,
    foreground_threshold: float = 0.5,
    min_area: int = 10,
    min_seed_area: int | None = None,
) -> np.ndarray:
    """Separates nuclei from background / inside / boundary probabilities.

    Touching nuclei share boundary pixels, so the *inside* class alone splits them: its
    connected components are the seeds, and a watershed on the inside probability grows each
    seed back over the boundary pixels of the foreground it belongs to.

    Args:
        probs: class probabilities (3, H, W) ordered as in :mod:`protoseg.data.targets`.
        marker_threshold: inside probability above which a pixel seeds a nucleus.
        foreground_threshold: ``1 - p(background)`` above which a pixel belongs to a nucleus.
        min_area: final objects smaller than this many pixels are dropped.
        min_seed_area: seeds smaller than this many pixels are dropped; None: half of
            ``min_area`` (at least 1).

    Returns:
        Instance map (H, W) int32, 0 = background, ids 1..N.
    """
    if probs.ndim != 3 or probs.shape[0] != 3:
        raise ValueError(f"expected probabilities of shape (3, H, W), got {probs.shape}")
    foreground = (1.0 - probs[BACKGROUND]) > foreground_threshold
    foreground = ndi.binary_fill_holes(foreground)
    seeds = (probs[INSIDE] > marker_threshold) & foreground
    if min_seed_area is None:
        min_seed_area = max(min_area // 2, 1)
    seeds = remove_small_objects(seeds, max_size=min_seed_area - 1)
    markers, _ = ndi.label(seeds)
    instances = watershed(-probs[INSIDE], markers, mask=foreground)
    if min_area > 1:
        instances = remove_small_objects(instances, max_size=min_area - 1)
    return relabel_sequential(instances)[0].astype(np.int32)


def drop_unsure_objects(
    instances: np.ndarray, foreground: np.ndarray, min_peak: float
) -> np.ndarray:
    """Removes the objects on which the network is nowhere confident.

    A head trained on pseudo masks draws faint objects off the nuclei. An object whose
    highest foreground probability stays below ``min_peak`` is dropped (measured:
    ``docs/postprocessing.md``).

    Args:
        instances: (H, W) int instance map, 0 = background.
        foreground: (H, W) foreground probability, ``1 - p(background)``.
        min_peak: the highest foreground probability an object must reach to stay.

    Returns:
        (H, W) int32 instance map, ids 1..N.
    """
    if instances.shape != foreground.shape:
        raise ValueError(
            f"instances {instances.shape} and foreground {foreground.shape} differ in shape"
        )
    count = int(instances.max())
    if count == 0:
        return instances.astype(np.int32)
    peaks = ndi.maximum(foreground, instances, np.arange(1, count + 1))
    keep = np.concatenate([[False], np.asarray(peaks) >= min_peak])
    kept = np.where(keep[instances], instances, 0)
    return relabel_sequential(kept)[0].astype(np.int32)


def most_convex_candidates(
    candidates: Sequence[np.ndarray], offsets: np.ndarray | None = None, share_power: float = 0.5
) -> np.ndarray:
    """Per connected piece of foreground, the candidate instance map that cuts it into the
    most convex objects.

    One foreground threshold cannot suit every nucleus: pale nuclei fall apart into rims and
    fragments at a high threshold, while dense ones fuse at a low one. Given instance maps of
    one image at several thresholds, each connected piece of their union takes its objects
    from the map whose objects there have the highest area-weighted mean solidity (area over
    convex-hull area): nuclei are convex, fragments and fused clumps are not. Ties go to the
    earlier candidate. An object belongs to the piece that holds it; a watershed object that
    is not connected belongs to the piece of its first pixel in raster order.

    With a centre detector's ``offsets``, each object's solidity is multiplied by the share
    of its pixels whose centre votes land inside it
    (:func:`~protoseg.modules.centre_votes.votes_inside`) to the power ``share_power``.
    Solidity alone also rewards a nucleus cut into two convex halves, or a pale one's rim
    broken into convex fragments; their pixels vote across the cut or into the hole
    (measured: ``docs/postprocessing.md``).

    Args:
        candidates: instance maps (H, W), 0 = background, of one image (e.g. one per
            foreground threshold).
        offsets: (2, H, W) centre offsets of the image, in units of
            :data:`~protoseg.modules.centre_votes.OFFSET_SCALE` px, or None.
        share_power: exponent of the share of an object's pixels voting inside it.

    Returns:
        (H, W) int32 instance map, ids 1..N.
    """
    if not candidates:
        raise ValueError("most_convex_candidates needs at least one instance map")
    shape = candidates[0].shape
    if any(c.shape != shape for c in candidates):
        raise ValueError(f"candidates differ in shape: {[c.shape for c in candidates]}")
    pieces, count = ndi.label(np.any([c > 0 for c in candidates], axis=0))
    best_score = np.full(count + 1, -1.0)
    best = np.zeros(count + 1, dtype=np.int64)
    piece_of = []
    for index, candidate in enumerate(candidates):
        objects = regionprops(candidate.astype(np.int64))
        labels = np.array([o.label for o in objects], dtype=np.int64)
        piece = np.zeros(int(candidate.max()) + 1, dtype=np.int64)
        if len(objects):
            piece[labels] = [pieces[tuple(o.coords[0])] for o in objects]
            area = np.array([o.area for o in objects], dtype=np.float64)
            merit = np.array([o.solidity for o in objects])
            if offsets is not None:
                merit = merit * votes_inside(candidate, offsets)[labels] ** share_power
            weighted = np.bincount(piece[labels], merit * area, minlength=count + 1)
            total = np.bincount(piece[labels], area, minlength=count + 1)
            score = np.where(total > 0, weighted / np.maximum(total, 1.0), -1.0)
            better = score > best_score
            best_score[better] = score[better]
            best[better] = index
        piece_of.append(piece)
    chosen = np.zeros(shape, dtype=np.int64)
    offset = 0
    for index, (candidate, piece) in enumerate(zip(candidates, piece_of, strict=True)):
        kept = (best[piece] == index) & (piece > 0)
        take = kept[candidate]
        chosen[take] = candidate[take] + offset
        offset += int(candidate.max())
    return relabel_sequential(chosen)[0].astype(np.int32)


def open_objects(instances: np.ndarray, radius: int) -> np.ndarray:
    """Opens each object by a disc of ``radius`` px: ragged spurs and one-pixel bridges go.

    A head trained on colour pseudo masks draws pale, speckled nuclei with jagged outlines,
    and the watershed leaves thin slivers where it cuts. An opening of each object on its own
    (neighbours never merge) trims them; objects narrower than the disc vanish, and a part
    the opening cuts off keeps its object's id. Beyond the image's edges is background: a
    nucleus the edge cuts keeps its cut side but loses slivers narrower than the disc there
    (measured: ``docs/postprocessing.md``).

    Args:
        instances: (H, W) int instance map, 0 = background.
        radius: the disc's radius, px; 0 returns the map as is.

    Returns:
        (H, W) int32 instance map, ids 1..N.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if radius == 0:
        return instances.astype(np.int32)
    footprint = disk(radius)
    opened = np.zeros(instances.shape, dtype=np.int64)
    for label, box in enumerate(ndi.find_objects(instances), start=1):
        if box is None:
            continue
        own = instances[box] == label
        # Outside the box is background, the image's edges included: a sliver of a nucleus
        # that the edge cuts goes like any part narrower than the disc.
        opened[box][ndi.binary_opening(own, footprint)] = label
    return relabel_sequential(opened)[0].astype(np.int32)
