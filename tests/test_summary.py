"""The README's results table: summary rows of result files, grouped by what they score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protoseg.io.errors import DataError
from protoseg.report import main
from protoseg.summary import BEGIN, END, SCORED, readme_table, splice, summary_row

ROOT = Path(__file__).resolve().parents[1]


def _write(folder: Path, name: str, record: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(record))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    machine = {"cpu": "AMD EPYC", "cpu_cores": 2, "gpu": None, "load_average_5min": 15.3}
    source = {"commit": "0123456789abcdef"}
    _write(
        folder,
        "b_chain.json",
        {
            "machine": machine,
            "source": source,
            "date": "2026-12-06T10:00:00+00:00",
            "summary": [
                summary_row("held head", "none", "held-out", {"pq": 0.4, "aji": 0.5}, 6, "x/train"),
                summary_row(
                    "fit head", "none", "fit", {"aji": 0.51}, 30, None, 1300.0, "bf16-mixed"
                ),
            ],
        },
    )
    _write(folder, "a_other.json", {"benchmark": "throughput", "images_per_s": 9.6})
    _write(
        tmp_path,
        "published.json",
        {"summary": [{**summary_row("paper", "none", "test", {"miou": 0.7}), "reference": "X"}]},
    )
    return folder


def test_rows_are_grouped_fit_held_out_test_with_their_machine_and_source(
    results: Path,
) -> None:
    table = readme_table(results, results.parent / "published.json", results.parent)
    lines = table.splitlines()
    headings = [i for i, line in enumerate(lines) if line.startswith("| **")]
    assert [lines[i].split("**")[1] for i in headings] == list(SCORED.values())
    fit, held, test = (lines[i + 1] for i in headings)
    assert fit.startswith("| fit head | none | 30 | AJI 0.510 | 21.7 min |")
    # a machine others loaded says so: its times are not its own
    run = "AMD EPYC (2 cores), bf16, shared, load 15, 2026-12-06, 0123456"
    assert fit.endswith(f"| {run} | [b_chain.json](results/b_chain.json) |")
    # named metrics first in their display order, whatever the row's order
    assert held.startswith("| held head | none | 6 (x/train) | AJI 0.500 · PQ 0.400 |")
    assert test == "| paper | none |  | mIoU 0.700 |  |  | X |"
    assert len(lines) == 2 + 3 + 3  # header, rule, 3 headings, 3 rows: a_other has no summary


def test_a_malformed_row_is_named(results: Path) -> None:
    _write(results, "c_bad.json", {"summary": [{"name": "x", "scored": "train"}]})
    with pytest.raises(DataError, match="c_bad.json: summary row 0: needs name and scored"):
        readme_table(results)


def test_splice_replaces_the_table_between_the_markers() -> None:
    text = f"intro\n{BEGIN}\nold table\n{END}\nafter\n"
    assert splice(text, "| new |\n") == f"intro\n{BEGIN}\n| new |\n{END}\nafter\n"
    with pytest.raises(DataError, match="README.md: no results table markers"):
        splice("no markers", "| new |\n")


def test_report_readme_splices_a_file(results: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{BEGIN}\n{END}\n")
    assert main(["--readme", "--results", str(results), "--splice", str(readme)]) == 0
    assert "| fit head | none | 30 |" in readme.read_text()


def test_the_readme_table_is_the_one_the_results_make() -> None:
    """After a benchmark writes a result, `make readme-table` brings the README up to date."""
    table = readme_table(ROOT / "benchmarks/results", ROOT / "benchmarks/published.json", ROOT)
    readme = (ROOT / "README.md").read_text()
    assert splice(readme, table) == readme, "README.md's results table is stale: make readme-table"
