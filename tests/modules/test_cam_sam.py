"""CAM pseudo masks, prompts from CAMs, EPLC-SAM's agreement filter and class conflicts."""

from __future__ import annotations

import numpy as np
import pytest

from protoseg.modules.cam_sam import (
    IGNORE,
    PromptSettings,
    agrees,
    cam_class_map,
    combine_sam_masks,
    region_boxes,
    sam_class_masks,
    sample_points,
)


def test_cam_class_map_takes_the_best_present_class() -> None:
    cams = np.zeros((3, 2, 3), np.float32)
    cams[0] = [[0.9, 0.2, 0.05], [0.5, 0.5, 0.0]]
    cams[1] = [[0.1, 0.8, 0.02], [0.45, 0.1, 0.0]]
    cams[2] = 1.0  # absent from the label: never chosen
    background = np.array([[False, False, False], [False, False, True]])
    present = np.array([True, True, False])
    classes = cam_class_map(cams, present, background, min_score=0.1)
    assert classes.tolist() == [[0, 1, IGNORE], [0, 0, 3]]
    with_margin = cam_class_map(cams, present, background, min_score=0.1, min_margin=0.1)
    assert with_margin[1, 0] == IGNORE  # 0.5 vs 0.45: too close to call
    single = cam_class_map(cams, np.array([False, False, True]), background, min_score=0.5)
    assert single.tolist() == [[2, 2, 2], [2, 2, 3]]


def test_points_are_drawn_in_proportion_to_the_cam_inside_the_mask() -> None:
    cam = np.zeros((10, 10), np.float32)
    cam[2, 3] = 3.0
    cam[7, 8] = 1.0
    cam[0, 0] = 100.0  # outside the mask: never drawn
    mask = np.ones((10, 10), bool)
    mask[0, 0] = False
    rng = np.random.default_rng(0)
    draws = np.concatenate([sample_points(cam, mask, 1, rng) for _ in range(4000)])
    share = (draws == [3, 2]).all(axis=1).mean()
    assert share == pytest.approx(0.75, abs=0.03)
    assert not (draws == [0, 0]).all(axis=1).any()
    both = sample_points(cam, mask, 50, rng)  # no more points than positive pixels
    assert sorted(map(tuple, both.tolist())) == [(3.0, 2.0), (8.0, 7.0)]
    assert sample_points(cam, np.zeros_like(mask), 5, rng).shape == (0, 2)


def test_region_boxes_of_connected_regions() -> None:
    mask = np.zeros((8, 10), bool)
    mask[1:3, 1:4] = True  # 6 px
    mask[5:8, 6:10] = True  # 12 px
    mask[4, 0] = True  # 1 px: below min_area
    boxes, labels = region_boxes(mask, min_area=2)
    assert boxes.tolist() == [[1, 1, 3, 2], [6, 5, 9, 7]]
    assert labels.max() == 2 and labels[4, 0] == 0 and (labels == 2).sum() == 12


def test_agreement_filter() -> None:
    cam = np.zeros((10, 10), bool)
    cam[:, :5] = True
    sam = np.zeros((10, 10), bool)
    sam[:, :5] = True
    sam[0, 5] = True  # 50 of 51 px inside
    assert agrees(sam, cam, 0.9)
    sam[:, 5:7] = True  # 50 of 70 px inside
    assert not agrees(sam, cam, 0.9) and agrees(sam, cam, 0.7)
    assert not agrees(np.zeros_like(sam), cam, 0.9)


class BoxFiller:
    """A stand-in for SamPredictor: each box prompt's mask is its box; records the tiles."""

    def __init__(self) -> None:
        self.tiles: list[tuple[int, int]] = []

    def set_window(self, image: np.ndarray, window: tuple[slice, slice]) -> None:
        self.shape = image[window].shape[:2]
        self.tiles.append(self.shape)

    def predict(self, boxes=None, points=None, point_labels=None):
        masks = np.zeros((len(boxes), *self.shape), np.float32)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.astype(int), strict=True):
            mask[y0 : y1 + 1, x0 : x1 + 1] = 1.0
        return masks, np.ones(len(boxes), np.float32)


def test_sam_masks_kept_where_they_agree_with_the_cam_tile_by_tile() -> None:
    height, width = 40, 60
    cam_classes = np.zeros((height, width), np.uint8)  # tumor everywhere...
    cam_classes[5:15, 5:15] = 1  # ...a stroma square (its box agrees with it)
    cam_classes[25:35, 30:50] = 1
    cam_classes[27:33, 35:45] = 0  # a ring: its box holds tumor, fails the 0.9 filter
    cams = np.stack([(cam_classes == 0), (cam_classes == 1), np.zeros_like(cam_classes)])
    cams = cams.astype(np.float32)
    present = np.array([True, True, False])
    settings = PromptSettings(prompt="box", min_region=4, min_overlap=0.9, tile=32, overlap=8)
    predictor = BoxFiller()
    kept, counts = sam_class_masks(
        predictor,
        np.zeros((height, width, 3), np.uint8),
        cams,
        cam_classes,
        present,
        settings,
        np.random.default_rng(0),
    )
    assert len(predictor.tiles) == 6 and all(s[0] <= 32 and s[1] <= 32 for s in predictor.tiles)
    assert kept.shape == (3, height, width) and not kept[2].any()
    assert kept[1][5:15, 5:15].all()
    assert not kept[1][27:33, 35:45].any()  # the ring's box was refused
    assert counts["prompts"] > counts["kept"] > 0


def test_combine_resolves_conflicts_by_cam_and_keeps_background() -> None:
    cam_classes = np.array([[0, 0, 1, 3]], np.uint8)
    kept = np.zeros((3, 1, 4), bool)
    kept[1, 0, :2] = True  # stroma's SAM mask claims pixels 0-1
    kept[0, 0, 1:] = True  # tumor's claims 1-3 (3 is glass)
    cams = np.zeros((3, 1, 4), np.float32)
    cams[0] = 0.6
    cams[1] = [[0.5, 0.7, 0.2, 0.0]]
    classes = combine_sam_masks(kept, cams, cam_classes, "cam")
    assert classes.tolist() == [[1, 1, 0, 3]]
    kept[:] = False
    kept[1, 0, 0] = True
    assert combine_sam_masks(kept, cams, cam_classes, "ignore").tolist() == [[1, 255, 255, 3]]
    assert combine_sam_masks(kept, cams, cam_classes, "cam").tolist() == [[1, 0, 1, 3]]
