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


def test_the_split_is_the_configs_settings_over_the_heads_own(tmp_path) -> None:
    net = {"class_path": "torch.nn.Identity"}
    guided = "protoseg.postprocess.centre_guided.CentreGuidedSplit"
    own = {
        "class_path": guided,
        "init_args": {"centre_net": net, "outline_opening": 3, "min_peak_probability": 0.99},
    }
    checkpoint = tmp_path / "head.ckpt"
    torch.save({"hyper_parameters": {"postprocess": own}}, checkpoint)
    config = tmp_path / "head.yaml"
    config.write_text(
        "model:\n  init_args:\n    postprocess:\n"
        f"      class_path: {guided}\n"
        "      init_args:\n        detector: elsewhere.ckpt\n"
        "        outline_opening: 4\n        min_peak_probability: null\n"
    )
    # The shipped settings win; the detector's network comes from the head's checkpoint.
    assert split_settings(str(checkpoint), str(config)) == {
        "class_path": guided,
        "init_args": {"centre_net": net, "outline_opening": 4, "min_peak_probability": None},
    }
    plain = "protoseg.postprocess.distance.DistanceSplit"
    config.write_text(
        f"model:\n  init_args:\n    postprocess:\n      class_path: {plain}\n"
        "      init_args:\n        min_distance: 9\n"
    )
    # Another strategy: its own settings alone (a distance split reads no detector).
    assert split_settings(str(checkpoint), str(config)) == {
        "class_path": plain,
        "init_args": {"min_distance": 9},
    }


def test_the_benchmark_writes_both_sets_and_the_tuning_only_verdict(
    tiny_monuseg_root, tmp_path, monkeypatch
) -> None:
    import json
    import sys

    from benchmarks import psm_sam
    from protoseg.datamodules.monuseg import find_records
    from protoseg.io.images import read_instance_png

    head = tmp_path / "head.ckpt"
    own = {"class_path": "protoseg.postprocess.distance.DistanceSplit", "init_args": {}}
    torch.save({"hyper_parameters": {"postprocess": own}}, head)
    config = tmp_path / "head.yaml"
    config.write_text(
        "model:\n  init_args:\n    postprocess:\n"
        "      class_path: protoseg.postprocess.distance.DistanceSplit\n"
        "      init_args:\n        min_area: 3\n"
    )
    cache = tmp_path / "cache"
    cache.mkdir()
    for record in find_records(tiny_monuseg_root, "png"):
        target = read_instance_png(record.label_path).astype(np.int32)
        inside = (target > 0).astype(np.float32)
        probs = np.stack([1 - inside, inside, np.zeros_like(inside)])
        np.savez(cache / f"{record.stem}.npz", probs=probs, guide=np.zeros(1), target=target)
    monkeypatch.setattr(psm_sam, "load_sam", lambda: None)
    predictor = BoxPredictor(0.9, 3)
    predictor.input_size = 128  # above the benchmark's 64 px overlap; one tile an image
    monkeypatch.setattr(psm_sam, "SamPredictor", lambda model: predictor)
    output = tmp_path / "sam.json"
    argv = ["psm_sam.py", f"--checkpoint={head}", f"--cache={cache}", f"--config={config}"]
    argv += [f"--data-root={tiny_monuseg_root}", "--val-fraction=0.34", f"--output={output}"]
    monkeypatch.setattr(sys, "argv", argv)
    psm_sam.main()
    result = json.loads(output.read_text())
    assert result["split_settings"]["init_args"] == {"min_area": 3}
    assert result["tuning"]["images"] + result["held_out"]["images"] == 3
    for name in ("tuning", "held_out"):
        assert set(result[name]["per_image"]) == set(result[f"{name}_images"])
    # The stand-in fills each object's box: the round nuclei lose AJI, SAM stays off.
    tuning = result["tuning"]
    gain = round(tuning["sam_refined"]["aji"] - tuning["split"]["aji"], 4)
    assert result["decision"]["tuning_aji_gain"] == gain < 0
    assert result["decision"]["gains"] is False
    assert result["complete"] is True and result["resumed_images"] == 0

    # A rerun with --resume keeps every image of the earlier file: SAM is not called again.
    class Refuses(BoxPredictor):
        def predict(self, boxes, points=None, point_labels=None):
            raise AssertionError("resumed images must not be refined again")

    refuses = Refuses(0.9, 3)
    refuses.input_size = 128
    monkeypatch.setattr(psm_sam, "SamPredictor", lambda model: refuses)
    monkeypatch.setattr(sys, "argv", [*argv, "--resume"])
    psm_sam.main()
    again = json.loads(output.read_text())
    assert again["resumed_images"] == 3
    for name in ("tuning", "held_out"):
        assert again[name]["sam_refined"] == result[name]["sam_refined"]


def test_bad_input_ends_the_benchmark_with_one_line_naming_the_file(tmp_path) -> None:
    import subprocess
    import sys

    from benchmarks.common import ROOT

    head = tmp_path / "head.ckpt"
    torch.save({"hyper_parameters": {"postprocess": {"class_path": "x", "init_args": {}}}}, head)
    missing = tmp_path / "missing.yaml"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/psm_sam.py"), f"--checkpoint={head}"]
        + [f"--cache={tmp_path}", f"--config={missing}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"protoseg: error: {missing}: no such config"
