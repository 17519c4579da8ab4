"""The WSSS4LUAD prototype benchmark: its tuning split, and the whole chain on a tiny root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tissue_codes, tissue_picture, write_palette_png
from PIL import Image

from benchmarks.wsss4luad_prototypes import CHAIN, HEAD_ARGS, tuning_split
from protoseg.chain import load_chain

ROOT = Path(__file__).resolve().parents[1]
COLOURS = [(0, 64, 128), (64, 128, 0), (243, 152, 0), (255, 255, 255)]
# Validation images by the classes they show: one normal, one stroma alone, six mixed.
VALIDATION = [[2], [1], *([[0, 1]] * 6)]


def wsss4luad_like(root: Path, size: int = 64) -> Path:
    """A root in the shared WSSS4LUAD copy's layout (training/, validation/{img,mask,
    background-mask}) with colour-coded tissue bands."""
    rng = np.random.default_rng(0)
    (root / "training").mkdir(parents=True)
    for index, present in enumerate([[0, 1], [1], [2], [0, 1]]):
        codes = tissue_codes(size, present, 3, rng)
        label = ", ".join(str(int(c in present)) for c in range(3))
        Image.fromarray(tissue_picture(codes, rng)).save(
            root / "training" / f"{index:02d}-[{label}].png"
        )
    for index, present in enumerate(VALIDATION):
        codes = tissue_codes(size, present, 3, rng)
        stem = f"{index:02d}"
        (root / "validation" / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(tissue_picture(codes, rng)).save(
            root / "validation" / "img" / f"{stem}.png"
        )
        write_palette_png(root / "validation" / "mask" / f"{stem}.png", codes, COLOURS)
        flags = (codes == 3).astype(np.uint8)
        write_palette_png(
            root / "validation" / "background-mask" / f"{stem}.png", flags, COLOURS[:2]
        )
    return root


def test_tuning_split_draws_from_each_group(tmp_path: Path) -> None:
    root = wsss4luad_like(tmp_path / "data")
    chosen = tuning_split(root / "validation" / "mask")
    assert len(chosen) == 6 and "00" in chosen and "01" in chosen
    assert chosen == tuning_split(root / "validation" / "mask")


def test_real_tuning_split(shared_data: Path) -> None:
    masks = shared_data / "wsss4luad" / "validation" / "mask"
    if not masks.is_dir():
        pytest.skip(f"{masks} is absent")
    assert tuning_split(masks) == ["00", "09", "10", "12", "15", "16"]


def test_the_supervised_reference_trains_as_the_chains_head() -> None:
    chain = load_chain(ROOT / CHAIN)
    head = next(step for step in chain.steps if step.name == "head fit")
    assert set(HEAD_ARGS) <= set(chain.argv(head, [], []))


@pytest.mark.slow
def test_benchmark_runs_on_a_tiny_root(tmp_path: Path) -> None:
    data = wsss4luad_like(tmp_path / "data")
    tuning = tuning_split(data / "validation" / "mask")
    output = tmp_path / "result.json"
    tiny = [
        "--trainer.max_steps=2",
        "--data.crop_size=64",
        "--data.crops_per_epoch=4",
        "--data.batch_size=2",
        "--data.num_workers=0",
    ]
    exclude = "--data.val_exclude=[" + ", ".join(f'"{s}"' for s in tuning) + "]"
    chain = [
        *tiny,
        "--step-arg=clusters=--model.init_args.clusters=6",
        f"--step-arg=naming=--images={' '.join(tuning)}",
        *(f"--step-arg={step}={exclude}" for step in ("pseudo masks validation", "head fit")),
        f"--step-arg=head validation={exclude}",
    ]
    command = [
        sys.executable,
        "benchmarks/wsss4luad_prototypes.py",
        f"--data-root={data}",
        f"--run-dir={tmp_path / 'run'}",
        f"--output={output}",
        "--folds=2",
        "--head-steps=2",
        *(f"--chain-arg={arg}" for arg in chain),
        *(f"--override={arg}" for arg in tiny),
        "--colour-arg=--model.init_args.clusters=6",
    ]
    subprocess.run(command, check=True, cwd=ROOT)
    result = json.loads(output.read_text())
    assert result["tuning_images"] == tuning
    for row in ("pseudo_masks", "head", "supervised_cv", "colour_baseline"):
        assert result[row]["held_out"]["images"] == 2 and result[row]["all"]["images"] == 8
        assert 0 <= result[row]["all"]["pixel_accuracy"] <= 1
    assert Path(result["checkpoint"]).is_absolute() and Path(result["checkpoint"]).is_file()
    assert {"ssl fit", "clusters", "naming", "head fit", "supervised fold1"} <= set(
        result["stages"]
    )
    assert all(s["peak_rss_mib"] > 50 for s in result["stages"].values())
    assert [row["scored"] for row in result["summary"]] == ["held-out"] * 4
    assert result["kept_steps"] == []  # a fresh run keeps nothing


def test_head_study_sees_what_the_resized_fit_sees() -> None:
    from benchmarks.wsss4luad_prototype_heads import holding_of, view

    target = np.zeros((40, 80), np.uint8)
    target[:, 40:] = 1
    grid, mask = view(torch.randn(256, 10, 20), target)
    assert grid.shape == (256, 64, 64) and mask.shape == (256, 256)
    assert mask[:, :128].eq(0).all() and mask[:, 128:].eq(1).all()
    # per class, the samples that hold it; a class no sample holds is never drawn
    labels = [np.array([1, 0, 0]), np.array([1, 1, 0])]
    assert holding_of(labels) == [[0, 1], [1]]


def test_the_prototype_sam_study_imports() -> None:
    # its embeddings come from SamEncoderEmbedder's cache (the study's own cache reader is gone)
    import benchmarks.wsss4luad_prototypes_sam as study

    assert study.GRID and callable(study.main)
