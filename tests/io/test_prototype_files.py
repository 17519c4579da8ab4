"""Cluster, names and dictionary files: round trips and errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from protoseg.io.class_maps import TissueClasses
from protoseg.io.errors import DataError
from protoseg.io.gallery import gallery_html
from protoseg.io.prototype_files import (
    IGNORE,
    Clusters,
    EmbedderSettings,
    build_dictionary,
    load_clusters,
    load_dictionary,
    load_names,
    save_clusters,
    save_dictionary,
    write_names,
)

CLASSES = TissueClasses(("tumor", "stroma", "normal"), background_code=3)


def clusters(k: int = 4) -> Clusters:
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(k, 8)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    sources = [
        [{"path": "a.png", "x": 10 * i, "y": 5, "size": 96, "slide": False}] for i in range(k)
    ]
    settings = EmbedderSettings(
        "protoseg.modules.prototypes.DenseEmbedder", {"weights": "/x/e.ckpt"}
    )
    return Clusters(centroids, np.arange(1, k + 1), settings, CLASSES, sources)


def test_round_trips(tmp_path: Path) -> None:
    original = clusters()
    loaded = load_clusters(save_clusters(tmp_path / "clusters.npz", original))
    assert np.array_equal(loaded.centroids, original.centroids)
    assert loaded.embedder == original.embedder and loaded.classes == CLASSES
    assert loaded.exemplars == original.exemplars
    names_path = write_names(tmp_path / "names.json", {0: "tumor", 2: "background"}, k=4)
    names = load_names(names_path, loaded)
    assert names == {0: "tumor", 1: IGNORE, 2: "background", 3: IGNORE}
    dictionary = build_dictionary(loaded, names)
    assert dictionary.classes_of.tolist() == [0, 3] and dictionary.clusters == [0, 2]
    again = load_dictionary(save_dictionary(tmp_path / "dictionary.npz", dictionary))
    assert np.array_equal(again.prototypes, original.centroids[[0, 2]])
    assert again.classes_of.tolist() == [0, 3] and again.names == ["tumor", "background"]
    assert again.clusters == [0, 2]
    with pytest.raises(ValueError, match="no cluster is named"):
        build_dictionary(loaded, dict.fromkeys(range(4), IGNORE))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ({"names": {"0": "tumour"}}, "cluster 0: unknown name 'tumour'"),
        ({"names": {"9": "tumor"}}, "cluster '9' does not exist"),
        ({"names": ["tumor"]}, "expected a mapping"),
        ("names: [", "cannot read names"),
    ],
)
def test_bad_names_name_the_file(tmp_path: Path, content: object, problem: str) -> None:
    path = tmp_path / "names.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DataError) as raised:
        load_names(path, clusters())
    assert str(raised.value).startswith(f"{path}: ") and problem in str(raised.value)


def test_wrong_kind_of_file(tmp_path: Path) -> None:
    path = save_clusters(tmp_path / "clusters.npz", clusters())
    with pytest.raises(DataError, match="not a prototype dictionary file"):
        load_dictionary(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz: not a clusters file"):
        load_clusters(tmp_path / "junk.npz")


def test_gallery_is_self_contained_with_one_field_per_cluster() -> None:
    thumbs = [[np.full((8, 8, 3), 30 * k, np.uint8)] * 2 for k in range(3)]
    page = gallery_html(thumbs, [5, 6, 7], ("tumor", "stroma", IGNORE), "clusters.npz")
    assert page.count('<select class="name"') == 3 and page.count("data:image/jpeg;base64,") == 6
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    assert page.count('<option value="ignore">') == 3


@pytest.mark.parametrize("fault", ["garbage", "truncated", "no_embedder", "flat_centroids"])
def test_broken_cluster_files_name_the_file(tmp_path: Path, fault: str) -> None:
    path = tmp_path / "clusters.npz"
    good = save_clusters(tmp_path / "good.npz", clusters()).read_bytes()
    meta = {"kind": "clusters", "embedder": {"class_path": "x"}, "classes": {}}
    if fault == "garbage":
        path.write_bytes(b"PK\x03\x04" + b"x" * 64)
    elif fault == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif fault == "no_embedder":
        np.savez(
            path,
            meta=np.array(json.dumps({"kind": "clusters"})),
            centroids=np.zeros((2, 3)),
            sizes=np.ones(2),
        )
    else:
        meta = {
            **meta,
            "classes": {"names": ["a"], "codes": [0], "background_code": None, "palette": []},
        }
        np.savez(path, meta=np.array(json.dumps(meta)), centroids=np.zeros(3), sizes=np.ones(3))
    with pytest.raises(DataError) as raised:
        load_clusters(path)
    assert str(raised.value).startswith(f"{path}: ")


def test_a_missing_names_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="names.json: names file does not exist"):
        load_names(tmp_path / "names.json", clusters())
