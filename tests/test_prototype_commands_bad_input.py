"""``protoseg dictionary``, ``name-clusters`` and ``score-tissue`` on bad input: one line
``protoseg: error: <file>: <problem>`` on stderr, exit status 2, and no input changed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from protoseg.commands import main
from protoseg.io.class_maps import TissueClasses
from protoseg.io.prototype_files import Clusters, EmbedderSettings, save_clusters, write_names

CLASSES = TissueClasses(("tumor", "stroma", "normal"), background_code=3)


def write_clusters(path: Path, weights: Path) -> Path:
    centroids = np.eye(4, 8, dtype=np.float32)
    embedder = EmbedderSettings(
        "protoseg.modules.prototypes.DenseEmbedder", {"weights": str(weights)}
    )
    return save_clusters(path, Clusters(centroids, np.ones(4, np.int64), embedder, CLASSES, []))


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Runs ``protoseg ARGV``; asserts exit 2 and one stderr line; returns that line."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("protoseg: error: "), lines
    return lines[0].removeprefix("protoseg: error: ")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    write_clusters(tmp_path / "clusters.npz", tmp_path / "no_encoder.ckpt")
    write_names(tmp_path / "names.json", {0: "tumor", 1: "stroma"})
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04" + b"x" * 64)
    (tmp_path / "unknown_class.json").write_text(json.dumps({"names": {"0": "tumour"}}))
    (tmp_path / "only_ignore.json").write_text(json.dumps({"names": {"0": "ignore"}}))
    return tmp_path


DICTIONARY = "dictionary --clusters {d}/clusters.npz --names {d}/names.json"
NAMING = "name-clusters --clusters {d}/clusters.npz --images 00"
# Case: (the command line, {d} the inputs' folder; how its one error line starts).
CASES: dict[str, tuple[str, str]] = {
    "clusters not an npz": (
        "dictionary --clusters {d}/broken.npz --names {d}/names.json",
        "{d}/broken.npz: not a clusters file",
    ),
    "names of an unknown class": (
        "dictionary --clusters {d}/clusters.npz --names {d}/unknown_class.json",
        "{d}/unknown_class.json: cluster 0: unknown name 'tumour'",
    ),
    "names of no class": (
        "dictionary --clusters {d}/clusters.npz --names {d}/only_ignore.json",
        "{d}/only_ignore.json: no cluster is named with a class",
    ),
    "names file missing": (
        "dictionary --clusters {d}/clusters.npz --names {d}/none.json",
        "{d}/none.json: names file does not exist",
    ),
    "dictionary over its clusters": (
        DICTIONARY + " --output {d}/clusters.npz",
        "{d}/clusters.npz: --output is {d}/clusters.npz, which this command reads",
    ),
    "dictionary into a folder": (
        DICTIONARY + " --output {d}",
        "{d}: --output is a folder, not a file",
    ),
    "naming over its clusters": (
        NAMING + " --root {d}/split --output {d}/clusters.npz",
        "{d}/clusters.npz: --output is {d}/clusters.npz, which this command reads",
    ),
    "naming a split without images": (
        NAMING + " --root {d}/empty --output {d}/n.json",
        "{d}/empty: no image folder (img or images)",
    ),
    "naming with an encoder that is gone": (
        NAMING + " --root {d}/split --output {d}/n.json",
        "{d}/no_encoder.ckpt: backbone weights file does not exist",
    ),
    "naming with no exemplar": (
        NAMING + " --root {d}/split --output {d}/n.json --exemplars 0",
        "protoseg name-clusters: --exemplars 0: need at least 1 patch per cluster",
    ),
    "scoring a missing folder": (
        "score-tissue --predictions {d}/none --root {d}/split",
        "{d}/none: predictions folder does not exist",
    ),
    "scoring an empty split": (
        "score-tissue --predictions {d} --root {d}/empty",
        "{d}/empty: no image folder (img or images)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_the_file(
    case: str, inputs: Path, make_wsss_root: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (inputs / "empty").mkdir()
    split = make_wsss_root(inputs / "root", n_train=1, n_val=1, n_test=0) / "val"
    split.rename(inputs / "split")
    before = snapshot(inputs)
    command, expected = CASES[case]
    args = command.format(d=inputs).split()
    if args[0] == "dictionary" and "--output" not in args:
        args += ["--output", str(inputs / "dictionary.npz")]
    assert fails(args, capsys).startswith(expected.format(d=inputs))
    assert snapshot(inputs) == before
