"""benchmarks/psm_sam.py's refinement, tile by tile, with stand-in predictors of known answers."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.psm_sam import sam_refine, split_settings


class BoxPredictor:
    """Answers each box prompt with probability ``value`` inside the box shrunk by
    ``margin`` px (the object's own bounding box when the prompt grew it by ``margin``)."""

    input_size = 32

    def __init__(self, value: float, margin: int) -> None:
        self.value, self.margin, self.images = value, margin, 0

    def set_image(self, image: np.ndarray) -> None:
        self.shape = image.shape[:2]
        self.images += 1

    def predict(self, boxes, points=None, point_labels=None):
        probs = np.zeros((len(boxes), *self.shape), np.float32)
        m = self.margin
        for prob, (x0, y0, x1, y1) in zip(probs, boxes.astype(int), strict=True):
            prob[y0 + m : y1 - m, x0 + m : x1 - m] = self.value
        return probs, np.ones(len(boxes), np.float32)


def squares() -> np.ndarray:
    instances = np.zeros((80, 80), np.int32)
    instances[5:12, 5:14] = 1
    instances[40:50, 60:70] = 2
    instances[60:75, 10:20] = 3
    instances[20:60, 20:58] = 4  # larger than a 32 px tile: kept as it is
    return instances


def test_box_answers_redraw_square_objects_as_they_are() -> None:
    instances = squares()
    image = np.zeros((80, 80, 3), np.uint8)
    predictor = BoxPredictor(0.9, margin=3)
    refined = sam_refine(image, instances, predictor, margin=3, overlap=8)
    np.testing.assert_array_equal(refined > 0, instances > 0)
    assert len(np.unique(refined)) == 5  # four objects and background
    assert predictor.images >= 1


def test_objects_sam_loses_keep_their_own_pixels() -> None:
    instances = squares()
    refined = sam_refine(np.zeros((80, 80, 3), np.uint8), instances, BoxPredictor(0.0, 3), 3, 8)
    np.testing.assert_array_equal(refined > 0, instances > 0)
    assert refined.dtype == np.int32


def test_sam_can_grow_an_object_inside_its_prompt_box() -> None:
    instances = np.zeros((32, 32), np.int32)
    instances[10:14, 10:14] = 1
    # The answer fills the whole grown box (margin 0 in the stand-in): 2 px more each side.
    refined = sam_refine(np.zeros((32, 32, 3), np.uint8), instances, BoxPredictor(0.9, 0), 2, 8)
    assert (refined > 0).sum() == 8 * 8


def test_the_split_is_the_heads_own_or_the_one_the_sweep_ships(tmp_path) -> None:
    net = {"class_path": "torch.nn.Identity"}
    own = {
        "class_path": "protoseg.postprocess.centre_guided.CentreGuidedSplit",
        "init_args": {"centre_net": net, "outline_opening": 3},
    }
    checkpoint = tmp_path / "head.ckpt"
    torch.save({"hyper_parameters": {"postprocess": own}}, checkpoint)
    assert split_settings(str(checkpoint), None, None) == own
    chosen = {"class_path": own["class_path"], "init_args": {"outline_opening": 4}}
    plain = {"class_path": "protoseg.postprocess.distance.DistanceSplit", "init_args": {}}
    sweep = {"shipped": plain, "chosen": chosen, "decision": {"ships": "chosen"}}
    # The detector's network comes from the head's checkpoint (the sweep's JSON leaves it out).
    assert split_settings(str(checkpoint), sweep, None)["init_args"] == {
        "outline_opening": 4,
        "centre_net": net,
    }
    assert split_settings(str(checkpoint), sweep, "shipped") == plain
    del sweep["decision"]  # a sweep of before the rule: its choice
    assert split_settings(str(checkpoint), sweep, None)["init_args"]["outline_opening"] == 4
