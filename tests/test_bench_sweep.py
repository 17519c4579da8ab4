"""benchmarks/psm_sweep.py on tiny synthetic inputs: the sweep's cached composition equals each
strategy's own split, and the search and simplification choose on the tuning images only."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from benchmarks.psm_sweep import (
    GUIDED,
    Evaluator,
    Inputs,
    as_distance,
    check_same,
    coordinate_search,
    decide,
    guided,
    simplify,
    with_args,
)
from protoseg.modules.centre_votes import OFFSET_SCALE
from protoseg.postprocess.centre_guided import build_network

SHIPPED = {
    "class_path": GUIDED,
    "init_args": {
        "centre_net": {"class_path": "torch.nn.Identity"},
        "centre_offset": 0.25,
        "centre_votes": True,
        "min_distance": 7,
        "foreground_threshold": [0.35, 0.5, 0.7, 0.9],
        "min_peak_probability": 0.9,
        "outline_opening": 2,
    },
}


def synthetic(seed: int, path: Path) -> Path:
    """One 64 x 64 image: discs (some touching) as true instances, soft class probabilities,
    a centre heatmap and offsets pointing at the centres, saved as the sweep saves them."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:64, :64]
    target = np.zeros((64, 64), np.int32)
    centres = []
    for label in range(1, 7):
        r, c = rng.integers(8, 56, size=2)
        radius = rng.integers(4, 8)
        target[((rows - r) ** 2 + (cols - c) ** 2 <= radius**2) & (target == 0)] = label
        centres.append((r, c))
    foreground = ndi.gaussian_filter((target > 0).astype(np.float32), 1.5)
    foreground = np.clip(foreground + rng.normal(0, 0.05, foreground.shape), 0.001, 0.999)
    probs = np.stack([1 - foreground, foreground * 0.8, foreground * 0.2]).astype(np.float32)
    heat = np.zeros((64, 64), np.float32)
    offsets = np.zeros((2, 64, 64), np.float32)
    for label, (r, c) in enumerate(centres, start=1):
        heat = np.maximum(heat, np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / 8.0))
        inside = target == label
        offsets[0][inside] = (r - rows[inside]) / OFFSET_SCALE
        offsets[1][inside] = (c - cols[inside]) / OFFSET_SCALE
    buffer = io.BytesIO()
    np.savez(buffer, probs=probs, guide=np.concatenate([heat[None], offsets]), target=target)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture
def images(tmp_path: Path) -> list[Inputs]:
    return [Inputs(synthetic(seed, tmp_path / f"image{seed}.npz")) for seed in range(4)]


@pytest.mark.parametrize(
    "settings",
    [
        SHIPPED,
        with_args(SHIPPED, centre_votes=False, min_peak_probability=None),
        with_args(SHIPPED, foreground_threshold=[0.5], outline_opening=0),
        as_distance(SHIPPED),
        as_distance(with_args(SHIPPED, foreground_threshold=[0.6])),
    ],
)
def test_the_cached_composition_is_the_strategys_own_split(
    images: list[Inputs], settings: dict
) -> None:
    evaluator = Evaluator(images)
    for index, image in enumerate(images):
        direct = build_network(settings).detached()(image.probs, image.guide)
        np.testing.assert_array_equal(evaluator.instances(settings, index), direct)
    check_same(evaluator, settings)
    scores = evaluator(settings)
    assert 0.0 < scores["aji"] <= 1.0


def test_search_and_simplification_choose_on_the_tuning_images(images: list[Inputs]) -> None:
    tuning = Evaluator(images[:3])
    log: list[dict] = []
    searched = coordinate_search(tuning, SHIPPED, SHIPPED, passes=2, log=log)
    # Every logged candidate was scored on the tuning images, and none beats the choice.
    assert log and all(row["aji"] <= tuning(searched)["aji"] + 1e-9 for row in log)
    assert tuning(searched)["aji"] >= tuning(SHIPPED)["aji"]
    assert {row["axis"] for row in log} >= {"strategy", "min_distance", "outline_opening"}
    decisions: list[dict] = []
    chosen = simplify(tuning, searched, spread=1.0, log=decisions)
    # A spread of a whole AJI drops every step that can go: a plain one-threshold split.
    assert chosen["class_path"].endswith("DistanceSplit")
    assert len(chosen["init_args"]["foreground_threshold"]) == 1
    assert chosen["init_args"]["min_peak_probability"] is None
    assert chosen["init_args"]["outline_opening"] == 0
    assert all(row["dropped"] for row in decisions)
    kept = simplify(tuning, searched, spread=-1.0, log=(none := []))
    assert kept == searched and len(none) == 1 and not none[0]["dropped"]
    assert images[3].stem not in {image.stem for image in tuning.images}


def test_guided_takes_the_detector_of_the_shipped_settings() -> None:
    plain = as_distance(SHIPPED)
    assert "centre_net" not in plain["init_args"]
    back = guided(plain, SHIPPED, votes=False)
    assert back["class_path"] == GUIDED
    assert back["init_args"]["centre_net"] == SHIPPED["init_args"]["centre_net"]
    assert back["init_args"]["centre_votes"] is False


@pytest.mark.parametrize(
    ("tuning_gain", "held_out_gain", "ships"),
    [(0.006, 0.001, "chosen"), (0.006, -0.02, "chosen"), (0.004, 0.03, "shipped")],
)
def test_the_choice_ships_past_the_spread_on_the_tuning_images_whatever_the_held_out_read(
    tuning_gain: float, held_out_gain: float, ships: str
) -> None:
    tuning = {"shipped": {"aji": 0.46}, "chosen": {"aji": 0.46 + tuning_gain}}
    held_out = {"shipped": {"aji": 0.45}, "chosen": {"aji": 0.45 + held_out_gain}}
    verdict = decide(tuning, held_out, spread=0.005)
    assert verdict["ships"] == ships
    assert verdict["tuning_aji_gain"] == pytest.approx(tuning_gain)
    assert verdict["held_out_aji_gain"] == pytest.approx(held_out_gain)


def test_a_broken_split_input_file_is_named(tmp_path) -> None:
    from benchmarks.psm_sweep import Inputs
    from protoseg.io.errors import DataError

    broken = tmp_path / "img.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"img.npz: not a split-input file .*delete it"):
        Inputs(broken)
    np.savez(broken, probs=np.zeros((3, 4, 4)), guide=np.zeros(1), target=np.zeros((5, 4)))
    with pytest.raises(DataError, match=r"img.npz: probabilities \(3, 4, 4\) and instances"):
        Inputs(broken)
    with pytest.raises(DataError, match="no such split-input file"):
        Inputs(tmp_path / "none.npz")
