"""benchmarks/psm_sam.py: the split it refines, its results file and its verdicts, with a
stand-in SAM predictor of known answers (tests/postprocess/test_sam_refine.py tests the
refinement itself)."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.psm_sam import split_settings
from protoseg.postprocess.sam_refine import SamRefinement
from tests.postprocess.test_sam_refine import BoxPredictor


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
    predictor = BoxPredictor(0.9, 3)
    predictor.input_size = 128  # above the refinement's 64 px overlap; one tile an image
    monkeypatch.setattr(SamRefinement, "load", lambda self: predictor)
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
    monkeypatch.setattr(SamRefinement, "load", lambda self: refuses)
    monkeypatch.setattr(sys, "argv", [*argv, "--resume"])
    psm_sam.main()
    again = json.loads(output.read_text())
    assert again["resumed_images"] == 3
    for name in ("tuning", "held_out"):
        assert again[name]["sam_refined"] == result[name]["sam_refined"]

    # Against a reference run (here the first, as if with full decoding): the same split, a
    # refined AJI 0.1 higher on one tuning image there, so this one reads lower by its share.
    reference = json.loads(output.read_text())
    stem = result["tuning_images"][0]
    reference["tuning"]["per_image"][stem]["sam_refined"]["aji"] += 0.1
    reference["decoder_window"] = None
    reference_path = tmp_path / "full.json"
    reference_path.write_text(json.dumps(reference))
    monkeypatch.setattr(sys, "argv", [*argv, "--resume", f"--reference={reference_path}"])
    psm_sam.main()
    compared = json.loads(output.read_text())["against_reference"]
    assert compared["decoder_window"] is None
    tuning = compared["tuning"]
    assert tuning["images"] == len(result["tuning_images"]) and tuning["same_split"]
    assert abs(tuning["aji_difference"] + 0.1 / tuning["images"]) <= 1e-4
    assert compared["held_out"]["aji_difference"] == 0
    assert compared["within_spread_on_tuning"] is (abs(tuning["aji_difference"]) <= 0.005)


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
