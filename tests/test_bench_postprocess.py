"""benchmarks/postprocess_pool.py: the saved split inputs come back as they were saved."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.postprocess_pool import (
    SPLIT_FILE,
    dequantize,
    load_inputs,
    load_split,
    quantize,
)
from protoseg.postprocess import DistanceSplit


def test_quantized_inputs_come_back_within_half_a_step(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(16, 16)).transpose(2, 0, 1).astype(np.float32)
    maps = np.stack([rng.random((16, 16)), rng.normal(0, 2, (16, 16)), np.zeros((16, 16))])
    target = rng.integers(0, 4, (16, 16)).astype(np.int32)
    arrays = {"target": target}
    for name, values in (("probs", probs), ("maps", maps.astype(np.float32))):
        arrays[name], arrays[f"{name}_low"], arrays[f"{name}_high"] = quantize(values)
    np.savez_compressed(tmp_path / "00_img.npz", **arrays)

    ((probs_back, maps_back, target_back),) = load_inputs(tmp_path)
    step = (probs.max(axis=(1, 2)) - probs.min(axis=(1, 2)))[:, None, None] / 255
    assert np.all(np.abs(probs_back - probs) <= step / 2 + 1e-6)
    np.testing.assert_allclose(maps_back[2], 0.0, atol=1e-6)  # a flat channel stays flat
    np.testing.assert_array_equal(target_back, target)
    assert probs_back.dtype == maps_back.dtype == np.float32
    codes, low, high = quantize(maps.astype(np.float32))
    assert codes.dtype == np.uint8 and codes.min() == 0 and codes[:2].max() == 255
    error = np.abs(dequantize(codes, low, high) - maps)
    assert np.all(error <= (high - low) / 510 + 1e-5)


def test_an_empty_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_inputs(tmp_path)


def test_the_split_settings_come_back_and_bad_files_are_named(tmp_path: Path) -> None:
    config = {
        "class_path": "protoseg.postprocess.distance.DistanceSplit",
        "init_args": {"foreground_threshold": [0.4, 0.6], "min_distance": 9},
    }
    (tmp_path / SPLIT_FILE).write_text(json.dumps(config))
    split = load_split(tmp_path)
    assert isinstance(split, DistanceSplit)
    assert (split.thresholds, split.min_distance) == ((0.4, 0.6), 9)
    (tmp_path / SPLIT_FILE).write_text("{")
    with pytest.raises(ValueError, match=SPLIT_FILE):
        load_split(tmp_path)
    (tmp_path / "00_img.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="00_img.npz"):
        load_inputs(tmp_path)
