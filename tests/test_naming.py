"""The simulated pathologist's second source: clusters the masks leave unnamed are named from
patches of images whose image-level label names one class."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.commands import run_command
from protoseg.io.class_maps import TissueClasses
from protoseg.io.errors import DataError
from protoseg.io.prototype_files import IGNORE, Clusters, EmbedderSettings, save_clusters
from protoseg.naming import annotated_patches, labelled_patches, simulated_names

CLASSES = TissueClasses(("tumor", "stroma", "normal"), background_code=3)


def clusters() -> Clusters:
    centroids = np.eye(3, dtype=np.float32)  # three orthogonal unit prototypes
    settings = EmbedderSettings("protoseg.modules.prototypes.DenseEmbedder", {})
    return Clusters(centroids, np.array([4, 4, 4]), settings, CLASSES)


def near(axis: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` unit vectors close to axis ``axis``."""
    points = np.eye(3, dtype=np.float32)[axis] + 0.1 * rng.random((count, 3), dtype=np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def test_label_patches_name_only_what_the_masks_left_unnamed() -> None:
    rng = np.random.default_rng(0)
    embeddings = np.concatenate([near(0, 10, rng), near(1, 10, rng), near(2, 10, rng)])
    # cluster 0: 10 stroma patches (the masks' tumour stays); cluster 1: 9 of 10 normal;
    # cluster 2: half tumour, half stroma (under the 0.8 purity: stays unnamed)
    classes = np.array([1] * 10 + [2] * 9 + [1] + [0] * 5 + [1] * 5)
    by_masks = {0: "tumor", 1: IGNORE, 2: IGNORE}
    named = simulated_names(clusters(), embeddings, classes, given=by_masks)
    assert named == {0: "tumor", 1: "normal", 2: IGNORE}
    # too few labelled patches near a centroid: out of 10 exemplars, 5 are not enough
    few = simulated_names(clusters(), embeddings[10:15], classes[10:15], given=by_masks)
    assert few == by_masks


def test_a_folder_without_one_class_labels_is_named(tmp_path: Path) -> None:
    for name in ("a-[1, 1, 0].png", "b-[1, 0, 1].png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    with pytest.raises(DataError, match=f"{tmp_path}: no image has an image-level label of one"):
        labelled_patches(clusters(), tmp_path)


def test_labelled_patches_are_the_one_class_images_cells(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a-[0, 0, 1].png", "b-[1, 1, 0].png", "c-[0, 1, 0].png"):
        pixels = rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / name)
    settings = EmbedderSettings(
        "protoseg.modules.prototypes.DenseEmbedder",
        {"backbone": "resnet18", "weights": None, "output_stride": 8, "window": 8},
    )
    found = Clusters(np.eye(3, 512, dtype=np.float32), np.ones(3, np.int64), settings, CLASSES)
    embeddings, classes = labelled_patches(found, tmp_path)
    # a and c: 2 x 3 cells of 8 px each; b names two classes and says nothing
    assert embeddings.shape == (12, 512) and classes.tolist() == [2] * 6 + [1] * 6
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)


def test_name_clusters_with_labelled_fills_what_the_masks_leave(
    tmp_path: Path, make_wsss_root: Callable[..., Path]
) -> None:
    root = make_wsss_root(tmp_path / "luad", n_train=4, n_val=1, n_test=0, size=32)
    settings = EmbedderSettings(
        "protoseg.modules.prototypes.DenseEmbedder",
        {"backbone": "resnet18", "weights": None, "output_stride": 8, "window": 8},
    )
    empty = Clusters(np.zeros((1, 512), np.float32), np.ones(1, np.int64), settings, CLASSES)
    # weights None: random encoders, drawn (seed 0) in the order the command draws them
    torch.manual_seed(0)
    annotated, _ = annotated_patches(empty, root / "val", ["00"])
    labelled, _ = labelled_patches(empty, root / "training")
    # one centroid per annotated patch (the masks name each), and one at a labelled patch,
    # which no annotated patch is nearest to: only the labels can name it
    centroids = np.concatenate([annotated, labelled[:1]]).astype(np.float32)
    found = Clusters(centroids, np.ones(len(centroids), np.int64), settings, CLASSES)
    clusters = save_clusters(tmp_path / "clusters.npz", found)
    argv = ["--clusters", str(clusters), "--root", str(root / "val"), "--images", "00"]
    argv += ["--exemplars", "1", "--purity", "1.0"]
    torch.manual_seed(0)
    assert run_command("name-clusters", [*argv, "--output", str(tmp_path / "masks.json")]) == 0
    with_labels = [
        *argv,
        "--labelled",
        str(root / "training"),
        "--output",
        str(tmp_path / "l.json"),
    ]
    torch.manual_seed(0)
    assert run_command("name-clusters", with_labels) == 0
    by_masks = json.loads((tmp_path / "masks.json").read_text())
    both = json.loads((tmp_path / "l.json").read_text())
    last = str(len(centroids) - 1)
    assert by_masks["names"][last] == "ignore" and both["names"][last] != "ignore"
    assert both["named_by_masks"] == by_masks["named"] == len(centroids) - 1
    assert "one-class image-level labels" in both["oracle"]
    assert {k: v for k, v in both["names"].items() if k != last} == {
        k: v for k, v in by_masks["names"].items() if k != last
    }
