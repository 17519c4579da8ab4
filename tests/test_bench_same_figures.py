"""benchmarks/same_figures.py: a commit's tree unpacked, the figures read from the child's
output, and the 4th-decimal comparison."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.same_figures import commit_id, compare, figures_in, main, unpack

BEFORE = {"val/pixel_dice": 0.36512, "val/object_dice": 0.34002, "val/aji": 0.151045, "val/pq": 0.1}


def test_figures_are_the_last_line_the_child_printed() -> None:
    lines = ["Seed set to 0", 'FIGURES {"val/aji": 0.1}', "noise", 'FIGURES {"val/aji": 0.2}']
    assert figures_in(lines) == {"val/aji": 0.2}
    with pytest.raises(ValueError, match="printed no figures"):
        figures_in(["Traceback (most recent call last):"])


def test_the_four_figures_must_agree_to_the_4th_decimal() -> None:
    after = {**BEFORE, "val/aji": 0.151049, "val/sq": 0.66}
    verdict = compare({"a": BEFORE, "b": after})
    assert verdict["same_to_4th_decimal"]
    assert verdict["compared"] == ["val/aji", "val/object_dice", "val/pixel_dice", "val/pq"]
    assert verdict["max_abs_difference"] == pytest.approx(4e-6)
    moved = compare({"a": BEFORE, "b": {**BEFORE, "val/pq": 0.1001}})
    assert not moved["same_to_4th_decimal"]
    with pytest.raises(ValueError, match="lack some of"):
        compare({"a": {"val/aji": 0.1}, "b": {"val/aji": 0.1}})


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_commit_s_tree_is_unpacked(tmp_path: Path) -> None:
    tree = unpack(commit_id("HEAD"), tmp_path / "head")
    assert (tree / "protoseg" / "cli.py").is_file()
    assert (tree / "configs" / "psm" / "segment_monuseg.yaml").is_file()


def test_only_validate_or_test_is_compared() -> None:
    with pytest.raises(SystemExit):
        main(["--commits", "HEAD", "--", "fit", "--config", "x.yaml"])
