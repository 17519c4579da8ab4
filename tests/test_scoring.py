"""protoseg score: prediction folders against a MoNuSeg-layout root's labels, per format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protoseg import scoring
from protoseg.commands import main
from protoseg.data.records import find_records
from protoseg.data.store import ImageStore
from protoseg.io.errors import DataError
from protoseg.metrics.functional import nuclei_scores
from protoseg.scoring import score_predictions


def write_predictions(root: Path, folder: Path, shift: int = 0) -> dict[str, np.ndarray]:
    """The root's own labels as predictions (``shift`` px to the right), as uint16 PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for record in find_records(root, "png"):
        labels = np.array(Image.open(record.label_path)).astype(np.int32)
        predicted = np.roll(labels, shift, axis=1)
        Image.fromarray(predicted.astype(np.uint16)).save(folder / f"{record.stem}.png")
        written[record.stem] = predicted
    return written


@pytest.fixture
def mixed_root(tmp_path: Path, make_monuseg_root) -> Path:
    """Three images with PNG labels, the first two with Aperio XML as well."""
    root = make_monuseg_root(tmp_path / "monuseg", labels=("png", "xml"))
    (root / "annotations_xml" / "img2.xml").unlink()
    return root


def test_scores_are_the_per_image_means_against_each_images_labels(
    mixed_root: Path, tmp_path: Path
) -> None:
    predicted = write_predictions(mixed_root, tmp_path / "pred", shift=2)
    result = score_predictions(tmp_path / "pred", mixed_root)
    assert result["images"] == 3
    assert {f: g["images"] for f, g in result["by_label_format"].items()} == {"xml": 2, "png": 1}
    store = ImageStore()
    expected = {}
    for record in find_records(mixed_root, "auto"):
        target = store.instances(record.label_path, record.label_format, (64, 64))
        expected[record.stem] = nuclei_scores(predicted[record.stem], target.astype(np.int64))
        assert result["per_image"][record.stem]["label_format"] == record.label_format
        for name, value in expected[record.stem].items():
            assert result["per_image"][record.stem][name] == pytest.approx(value, abs=1e-12)
    for name in ("aji", "object_dice", "pq"):
        mean = np.mean([scores[name] for scores in expected.values()])
        assert result["mean"][name] == pytest.approx(mean, abs=1e-12)
        xml = np.mean([expected[s][name] for s in ("img0", "img1")])
        assert result["by_label_format"]["xml"]["mean"][name] == pytest.approx(xml, abs=1e-12)
    # Against the PNG labels they were made from, unshifted predictions score 1.
    write_predictions(mixed_root, tmp_path / "same")
    exact = score_predictions(tmp_path / "same", mixed_root, label_source="png")
    assert all(value == 1.0 for value in exact["mean"].values())
    # The XML outlines are not the PNG's: the same maps score below 1 against them.
    assert (
        score_predictions(tmp_path / "same", mixed_root)["by_label_format"]["xml"]["mean"]["aji"]
        < 1.0
    )


def test_the_command_prints_a_table_and_writes_json(
    mixed_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_predictions(mixed_root, tmp_path / "pred", shift=1)
    output = tmp_path / "out" / "scores.json"
    main(["score", "--predictions", str(tmp_path / "pred"), "--root", str(mixed_root),
          "--output", str(output)])  # fmt: skip
    table = capsys.readouterr().out
    assert "| all | 3 |" in table and "| xml | 2 |" in table and "| png | 1 |" in table
    saved = json.loads(output.read_text())
    assert saved == json.loads(json.dumps(score_predictions(tmp_path / "pred", mixed_root)))
    assert not list(output.parent.glob(".*.tmp"))


def test_bad_inputs_are_named(mixed_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="predictions folder does not exist"):
        score_predictions(tmp_path / "nowhere", mixed_root)
    write_predictions(mixed_root, tmp_path / "pred")
    (tmp_path / "pred" / "img1.png").unlink()
    with pytest.raises(DataError, match=r"img1\.png: prediction missing"):
        score_predictions(tmp_path / "pred", mixed_root)
    Image.fromarray(np.zeros((32, 64), np.uint16)).save(tmp_path / "pred" / "img1.png")
    with pytest.raises(DataError, match=r"img1\.png: prediction \(32, 64\) != image \(64, 64\)"):
        score_predictions(tmp_path / "pred", mixed_root)
    (tmp_path / "pred" / "img1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"img1\.png"):
        score_predictions(tmp_path / "pred", mixed_root)
    with pytest.raises(SystemExit):
        main(["score", "--predictions", str(tmp_path / "nowhere"), "--root", str(mixed_root)])


def test_a_missing_prediction_fails_before_any_image_is_scored(
    mixed_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_predictions(mixed_root, tmp_path / "pred")
    sorted((tmp_path / "pred").glob("*.png"))[-1].unlink()

    def scored(*args: object) -> None:
        raise AssertionError("an image was scored before the missing prediction was found")

    monkeypatch.setattr(scoring, "nuclei_scores", scored)
    with pytest.raises(DataError, match="prediction missing"):
        score_predictions(tmp_path / "pred", mixed_root)
