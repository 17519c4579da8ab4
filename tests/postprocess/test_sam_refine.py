"""SamRefinement: Segment Anything redraws each object of an instance split from its box.

The tile-by-tile logic is checked with a stand-in predictor of known answers; LiteMedSAM
itself (from the installed package) on a 128 px image of three synthetic nuclei.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from protoseg.io.errors import DataError
from protoseg.metrics.functional import nuclei_scores
from protoseg.postprocess.sam_refine import SamRefinement, refine_instances


class BoxPredictor:
    """Answers each box prompt with probability ``value`` inside the box shrunk by
    ``margin`` px (the object's own bounding box when the prompt grew it by ``margin``)."""

    input_size = 32

    def __init__(self, value: float, margin: int) -> None:
        self.value, self.margin, self.images = value, margin, 0

    def set_image(self, image: np.ndarray) -> None:
        self.shape = image.shape[:2]
        self.images += 1

    def predict(self, boxes, points=None, point_labels=None, window=None):
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
    refined = refine_instances(image, instances, predictor, margin=3, overlap=8)
    np.testing.assert_array_equal(refined > 0, instances > 0)
    assert len(np.unique(refined)) == 5  # four objects and background
    assert predictor.images >= 1


def test_objects_sam_loses_keep_their_own_pixels_and_ids_come_out_sequential() -> None:
    instances = squares() * 3  # ids 3, 6, 9, 12
    refined = refine_instances(np.zeros((80, 80, 3), np.uint8), instances, BoxPredictor(0, 3), 3, 8)
    np.testing.assert_array_equal(refined > 0, instances > 0)
    assert refined.dtype == np.int32
    assert sorted(np.unique(refined)) == [0, 1, 2, 3, 4]
    for label in (3, 6, 9, 12):  # each object one id, whole
        assert len(np.unique(refined[instances == label])) == 1


def test_sam_can_grow_an_object_inside_its_prompt_box() -> None:
    instances = np.zeros((32, 32), np.int32)
    instances[10:14, 10:14] = 1
    # The answer fills the whole grown box (margin 0 in the stand-in): 2 px more each side.
    refined = refine_instances(
        np.zeros((32, 32, 3), np.uint8), instances, BoxPredictor(0.9, 0), 2, 8
    )
    assert (refined > 0).sum() == 8 * 8


def synthetic_nuclei() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 128 px H&E-like image with three dark nuclei (two touching) on pink stroma, its
    true instance map, and a rough split of it (boxes shifted and cut short)."""
    rows, cols = np.mgrid[:128, :128]
    truth = np.zeros((128, 128), np.int32)
    nuclei = [(40, 40, 12, 9), (40, 62, 10, 12), (90, 85, 14, 10)]
    for label, (cy, cx, ry, rx) in enumerate(nuclei, 1):
        truth[((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1] = label
    rng = np.random.default_rng(0)
    image = np.empty((128, 128, 3), np.float32)
    image[:] = (235, 180, 215)
    image[truth > 0] = (90, 50, 140)
    image += rng.normal(0, 6, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    rough = np.zeros_like(truth)
    rough[30:48, 33:46] = 1  # the first nucleus, its lower part missed
    rough[33:50, 52:70] = 2  # the second as a box
    rough[80:98, 78:95] = 3  # the third, cut short
    return image, truth, rough


@pytest.fixture(scope="module")
def lite_medsam_refinement() -> SamRefinement:
    return SamRefinement(decoder_window=None, progress=False)


@pytest.fixture(scope="module")
def fully_decoded(lite_medsam_refinement) -> np.ndarray:
    """The synthetic nuclei refined by LiteMedSAM, each box decoded against the whole tile."""
    image, _, rough = synthetic_nuclei()
    return lite_medsam_refinement(image, rough)


def test_lite_medsam_redraws_as_the_benchmark_function_did(fully_decoded) -> None:
    """Decoding each box against the whole tile, the part gives, pixel for pixel, what
    ``benchmarks.psm_sam.sam_refine`` (the benchmark's function before it became this part,
    6a6d6a7) gave on this image: its SHA-256 and object sizes were recorded then."""
    _, truth, rough = synthetic_nuclei()
    refined = fully_decoded
    assert np.bincount(refined.ravel()).tolist() == [15323, 319, 356, 386]
    digest = hashlib.sha256(refined.astype(np.int32).tobytes()).hexdigest()
    assert digest == "761e426639c009fcb68edbe143ffdb18f79a5d1267fcb3dc3d6542796a477c46"
    # The rough split's boxes became the nuclei: AJI 0.694 -> 0.930.
    assert nuclei_scores(rough, truth)["aji"] < 0.7 < 0.92 < nuclei_scores(refined, truth)["aji"]


def test_local_decoder_windows_keep_each_object_inside_its_box(
    lite_medsam_refinement, fully_decoded
) -> None:
    image, truth, rough = synthetic_nuclei()
    full = fully_decoded
    local = refine_instances(image, rough, lite_medsam_refinement.load(), margin=3, window=16)
    assert sorted(np.unique(local)) == [0, 1, 2, 3]
    for label in (1, 2, 3):
        rows, cols = np.nonzero(rough == label)
        drawn_rows, drawn_cols = np.nonzero(local == label)
        assert drawn_rows.min() >= rows.min() - 3 and drawn_rows.max() <= rows.max() + 3
        assert drawn_cols.min() >= cols.min() - 3 and drawn_cols.max() <= cols.max() + 3
    # 16 x 16 of the tile's 64 x 64 embeddings: nearly the full decoder's answer.
    assert (local != full).sum() < 0.05 * (full > 0).sum()
    assert nuclei_scores(local, truth)["aji"] > 0.9


def test_a_missing_or_foreign_sam_checkpoint_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "sam.pth"
    with pytest.raises(DataError, match=rf"^{missing}: no such SAM checkpoint"):
        SamRefinement(checkpoint=str(missing))
    torch.save({"weight": torch.zeros(2)}, missing)
    refinement = SamRefinement(checkpoint=str(missing))
    with pytest.raises(DataError, match=rf"^{missing}: not a Segment Anything checkpoint"):
        refinement.load()


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="decoder_window"):
        SamRefinement(decoder_window=0)
    with pytest.raises(ValueError, match="margin"):
        SamRefinement(margin=-1)
