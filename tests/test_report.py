"""``protoseg report``: benchmark JSONs and runs' last TensorBoard scalars in one table."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from protoseg.io.errors import DataError
from protoseg.report import benchmark_rows, main, report, run_rows, select_columns


@pytest.fixture
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "b_seg.json").write_text(
        json.dumps(
            {
                "command": "benchmarks/x.py --long args",
                "machine": {"cpu": "Xeon", "gpu": None, "python": "3.11"},
                "benchmark": "seg",
                "steps": 10,
                "validation": {"aji": 0.51234, "pq": 0.5},
                "per_image": [0.1, 0.2],
            }
        )
    )
    (folder / "a_wsi.json").write_text(
        json.dumps({"benchmark": "wsi", "svs": {"tiles_per_s": 12.5}, "note": "a|b"})
    )
    return folder


def write_scalars(folder: Path, values: dict[str, list[tuple[int, float]]]) -> None:
    writer = SummaryWriter(str(folder))
    for tag, points in values.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()


def test_benchmark_rows_flatten_and_leave_out_commands_and_lists(results: Path) -> None:
    rows = benchmark_rows(results)
    assert [Path(r["source"]).name for r in rows] == ["a_wsi.json", "b_seg.json"]
    seg = rows[1]
    assert seg["validation.aji"] == 0.51234 and seg["steps"] == 10
    assert seg["machine.cpu"] == "Xeon" and seg["machine.gpu"] is None
    assert not any(k.startswith(("command", "per_image", "machine.python")) for k in seg)
    assert rows[0]["svs.tiles_per_s"] == 12.5


def test_runs_merge_logger_versions_and_keep_the_last_step(tmp_path: Path) -> None:
    runs = tmp_path / "sweeps"
    # A run preempted at step 20 and resumed: the resumed run logs into version_1.
    write_scalars(
        runs / "ssl" / "simclr_s0" / "tensorboard" / "version_0",
        {"train/loss": [(10, 3.0), (20, 2.5)]},
    )
    write_scalars(
        runs / "ssl" / "simclr_s0" / "tensorboard" / "version_1",
        {"train/loss": [(30, 2.0), (40, 1.5)], "val/aji": [(40, 0.4)]},
    )
    write_scalars(runs / "ssl" / "moco_s0" / "tensorboard" / "version_0", {"train/loss": [(5, 4)]})
    rows = run_rows(runs)
    assert [Path(r["source"]).name for r in rows] == ["moco_s0", "simclr_s0"]
    simclr = rows[1]
    assert simclr["step"] == 40
    assert simclr["train/loss"] == pytest.approx(1.5)
    assert simclr["val/aji"] == pytest.approx(0.4)
    assert "val/aji" not in rows[0]


def test_markdown_and_csv_tables(results: Path, tmp_path: Path) -> None:
    text = report(results, fmt="markdown")
    lines = text.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[0] == "source" and "validation.aji" in header and "svs.tiles_per_s" in header
    assert lines[1].count("---") == len(header)
    assert len(lines) == 4
    assert "0.5123" in lines[3] and "a\\|b" in lines[2], "floats rounded, pipes escaped"

    rows = list(csv.DictReader(io.StringIO(report(results, fmt="csv"))))
    assert rows[1]["validation.aji"] == "0.51234" and rows[0]["validation.aji"] == ""

    out = tmp_path / "table.csv"
    assert main(["--results", str(results), "--columns", "benchmark,validation.*", "--output",
                 str(out)]) == 0  # fmt: skip
    written = list(csv.reader(out.open()))
    assert written[0] == ["source", "benchmark", "validation.aji", "validation.pq"]


def test_select_columns_and_errors(tmp_path: Path) -> None:
    rows = [{"source": "a", "x": 1, "val/aji": 2}, {"source": "b", "y": 3}]
    assert select_columns(rows) == ["source", "x", "val/aji", "y"]
    assert select_columns(rows, ["val/*", "x"]) == ["source", "val/aji", "x"]
    with pytest.raises(DataError, match="results folder does not exist"):
        benchmark_rows(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="broken.json: not readable as JSON"):
        benchmark_rows(bad)
