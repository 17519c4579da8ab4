"""benchmarks/monuseg_colour_baseline.py on a synthetic MoNuSeg root: figures and JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import MakeRoot

from benchmarks import monuseg_colour_baseline
from protoseg.io.errors import DataError


def test_colour_baseline_finds_synthetic_nuclei_and_writes_json(
    tiny_monuseg_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Synthetic H&E: dark hematoxylin disks on eosin; Otsu of H density finds most of them."""
    output = tmp_path / "results" / "colour.json"
    argv = ["monuseg_colour_baseline.py", "--data-root", str(tiny_monuseg_root)]
    monkeypatch.setattr(sys, "argv", [*argv, "--output", str(output), "--min-area", "5"])
    monuseg_colour_baseline.main()
    figures = json.loads(output.read_text())
    assert figures["images"] == 3
    assert figures["labels_used_for_training"] is False
    assert set(figures["validation"]) == {
        "pixel_dice",
        "pixel_iou",
        "object_dice",
        "aji",
        "dq",
        "sq",
        "pq",
    }
    assert figures["validation"]["pixel_dice"] > 0.8
    assert figures["command"].startswith("monuseg_colour_baseline.py --data-root")
    assert not list(output.parent.glob(".*.tmp"))


def test_colour_baseline_without_labels_names_the_root_and_writes_nothing(
    make_monuseg_root: MakeRoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_monuseg_root(tmp_path / "unlabelled", labels=())
    output = tmp_path / "colour.json"
    argv = ["monuseg_colour_baseline.py", "--data-root", str(root), "--output", str(output)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(DataError, match=f"{root}: no labelled images"):
        monuseg_colour_baseline.main()
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob(".*.tmp"))
