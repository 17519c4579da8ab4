"""benchmarks/psm_recipes.py: the rows of the two PSM recipes and the paired comparison."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_he, synthetic_instances

from benchmarks import psm_recipes
from protoseg.io.errors import DataError
from protoseg.metrics.functional import nuclei_scores

TINY_NET = ["--model.backbone.init_args.name=resnet18"]


def run_on_labels(
    root: Path, output: Path, options: Sequence[str] = (), overrides: Sequence[str] = ()
) -> dict:
    """The benchmark on ``root`` (48 px crops, a ResNet-18 for the authors' net), the true
    labels standing in for our pseudo masks; its JSON."""
    argv = ["--data-root", str(root), "--ours-masks", str(root / "labels"), "--crop", "48"]
    psm_recipes.main([*argv, *options, "--output", str(output), "--", *TINY_NET, *overrides])
    return json.loads(output.read_text())


def test_every_row_finds_synthetic_nuclei() -> None:
    """Dark hematoxylin disks on eosin: every colour row finds them; a map that is the truth
    itself keeps the authors' clustering on them."""
    rng = np.random.default_rng(0)
    truth = synthetic_instances(96, 8, rng)
    rgb = synthetic_he(truth, rng)
    activation = (truth > 0).astype(np.float32)
    rows = psm_recipes.recipe_instances(rgb, activation, truth)
    assert set(rows) == set(psm_recipes.ROWS)
    for row, found in rows.items():
        assert found.shape == truth.shape, row
        if row not in ("authors", "authors_rgb_only"):  # those drop objects under 200 px
            assert nuclei_scores(found.astype(np.int64), truth)["pixel_dice"] > 0.8, row
    assert nuclei_scores(rows["ours"], truth)["aji"] == 1.0


def test_paired_counts_images_and_mean_difference() -> None:
    per_image = {
        "a": [{"aji": 0.5}, {"aji": 0.4}, {"aji": 0.3}],
        "b": [{"aji": 0.4}, {"aji": 0.4}, {"aji": 0.5}],
    }
    pair = psm_recipes.paired(per_image, "a", "b")
    assert pair["images_first_better"] == 1 and pair["images"] == 3
    assert pair["mean_aji_difference"] == pytest.approx((0.1 + 0.0 - 0.2) / 3, abs=1e-4)


def test_random_init_run_writes_every_row(tiny_monuseg_root: Path, tmp_path: Path) -> None:
    """The true labels stand in for our masks: the ``ours`` row scores AJI 1."""
    figures = run_on_labels(tiny_monuseg_root, tmp_path / "recipes.json")
    assert figures["images"] == 3 and figures["authors_fit"]["steps"] == 0
    assert set(figures["rows"]) == set(psm_recipes.ROWS)
    assert figures["rows"]["ours"]["aji"] == 1.0
    assert len(figures["per_image_aji"]["authors"]) == 3
    assert [p["rows"] for p in figures["paired"]] == [list(p) for p in psm_recipes.PAIRS]


def test_missing_pseudo_mask_is_named(tiny_monuseg_root: Path, tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    shutil.copytree(tiny_monuseg_root / "labels", masks)
    (masks / "img1.png").unlink()
    argv = ["--data-root", str(tiny_monuseg_root), "--ours-masks", str(masks)]
    with pytest.raises(DataError, match="no pseudo mask for img1"):
        psm_recipes.main([*argv, "--output", str(tmp_path / "out.json")])
    assert not (tmp_path / "out.json").exists()


@pytest.mark.slow
def test_fit_steps_trains_then_compares(tiny_monuseg_root: Path, tmp_path: Path) -> None:
    tiny_fit = [
        "--data.crop_size=32",
        "--model.augment.init_args.size=32",
        "--data.batch_size=2",
        "--data.num_workers=0",
        "--trainer.precision=32-true",
        "--trainer.enable_progress_bar=false",
    ]
    run_dir = ["--fit-steps", "2", "--run-dir", str(tmp_path / "runs" / "fit")]
    figures = run_on_labels(tiny_monuseg_root, tmp_path / "recipes.json", run_dir, tiny_fit)
    fit = figures["authors_fit"]
    assert fit["steps"] == 2 and fit["precision"] == "32-true" and fit["wall_seconds"] > 0
    assert Path(fit["checkpoint"]).is_file()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_target_is_one_valid_benchmark_line() -> None:
    """make bench-psm-recipes: the benchmark's own arguments, the crop reaching both the
    datamodule and the view augmentation."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "bench-psm-recipes"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    (words,) = [shlex.split(line) for line in done.stdout.replace("\\\n", " ").splitlines()]
    assert words[1] == "benchmarks/psm_recipes.py"
    args = psm_recipes.parse_args(words[2:])
    assert args.fit_steps == 80 and args.output.endswith("monuseg_psm_recipes.json")
    crops = {arg.split("=")[1] for arg in args.extra}
    assert [a.split("=")[0] for a in args.extra] == [
        "--data.crop_size",
        "--model.augment.init_args.size",
    ]
    assert crops == {"128"}
