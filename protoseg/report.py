"""``protoseg report``: benchmark results and run metrics in one markdown or CSV table.

Rows come from two sources:

- every ``*.json`` of the results folder (``benchmarks/results``), one row per file: its
  scalar entries, nested ones flattened with dots (``validation.aji``); the machine is kept
  as ``machine.cpu`` / ``machine.gpu`` (the other machine keys, and the ``command``, stay in
  the files);
- every run folder under ``--runs`` (e.g. ``runs/sweeps``), one row per run: the last value
  (highest step) of each TensorBoard scalar, merged over the logger's ``version_*`` folders, so
  that a run resumed after preemption (which logs into a new version) is one row.

A run folder is the ``save_dir`` of its TensorBoard logger: the folder above
``<name>/version_<n>/events.out.tfevents.*`` (what every shipped config writes).
Columns are the union of the rows' keys in order of appearance; ``--columns`` keeps those
matching shell-style patterns (``'validation.*,train/loss'``). Markdown rounds floats to 4
decimals; CSV keeps full precision.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from protoseg.io.errors import DataError
from protoseg.io.images import write_text_atomic
from protoseg.usage import ToolParser

Row = dict[str, Any]
# Machine keys worth a column; the rest (python, platform, ...) stays in the JSON files.
MACHINE_KEYS = ("cpu", "gpu")
SKIPPED_KEYS = ("command",)


def flatten(record: dict[str, Any], prefix: str = "") -> Row:
    """Scalar leaves of nested dicts keyed by dotted path; lists are left out."""
    row: Row = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            row.update(flatten(value, f"{name}."))
        elif value is None or isinstance(value, str | int | float | bool):
            row[name] = value
    return row


def benchmark_rows(results_dir: str | Path) -> list[Row]:
    """One row per ``*.json`` file of ``results_dir`` (sorted by name), ``source`` first.

    Raises:
        DataError: the folder is missing, or a file is not a JSON object.
    """
    folder = Path(results_dir)
    if not folder.is_dir():
        raise DataError(f"{folder}: results folder does not exist")
    rows = []
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(f"{path}: not readable as JSON ({error})") from error
        if not isinstance(record, dict):
            raise DataError(f"{path}: expected a JSON object, got {type(record).__name__}")
        machine = record.get("machine")
        record = {k: v for k, v in record.items() if k not in (*SKIPPED_KEYS, "machine")}
        if isinstance(machine, dict):
            record["machine"] = {k: machine.get(k) for k in MACHINE_KEYS}
        rows.append({"source": path.as_posix(), **flatten(record)})
    return rows


def run_folder(event_file: Path) -> Path:
    """The logger's save_dir of a TensorBoard event file (above ``<name>/version_<n>/``)."""
    folder = event_file.parent
    if re.fullmatch(r"version_\d+", folder.name):
        return folder.parent.parent
    return folder


def run_rows(runs_dir: str | Path) -> list[Row]:
    """One row per run folder under ``runs_dir`` (sorted): ``source``, ``step`` (the highest
    logged step) and the last value of each scalar tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = Path(runs_dir)
    if not root.is_dir():
        raise DataError(f"{root}: runs folder does not exist")
    # tag -> (step, wall_time, value) of the latest event, per run folder.
    runs: dict[Path, dict[str, tuple[int, float, float]]] = {}
    for event_file in sorted(root.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        accumulator.Reload()
        latest = runs.setdefault(run_folder(event_file), {})
        for tag in accumulator.Tags().get("scalars", []):
            for event in accumulator.Scalars(tag):
                key = (event.step, event.wall_time)
                if tag not in latest or key >= latest[tag][:2]:
                    latest[tag] = (event.step, event.wall_time, event.value)
    rows = []
    for folder in sorted(runs):
        scalars = runs[folder]
        row: Row = {"source": folder.as_posix()}
        row["step"] = max((step for step, _, _ in scalars.values()), default=None)
        row.update({tag: scalars[tag][2] for tag in sorted(scalars)})
        rows.append(row)
    return rows


def select_columns(rows: Sequence[Row], patterns: Sequence[str] | None = None) -> list[str]:
    """Union of the rows' keys in order of appearance, ``source`` first; with ``patterns``
    only the keys matching one of them (``fnmatch``), in the patterns' order."""
    keys: list[str] = ["source"]
    for row in rows:
        keys += [key for key in row if key not in keys]
    if not patterns:
        return keys
    chosen = ["source"]
    for pattern in patterns:
        chosen += [k for k in keys if fnmatch.fnmatchcase(k, pattern) and k not in chosen]
    return chosen


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value).replace("|", "\\|")


def to_markdown(rows: Sequence[Row], columns: Sequence[str]) -> str:
    """GitHub-flavoured markdown table; empty cells where a row lacks a column."""
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[Row], columns: Sequence[str]) -> str:
    """CSV with a header line; empty fields where a row lacks a column."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def report(
    results_dir: str | Path | None = "benchmarks/results",
    runs_dirs: Iterable[str | Path] = (),
    columns: Sequence[str] | None = None,
    fmt: str = "markdown",
) -> str:
    """The table of :func:`benchmark_rows` then :func:`run_rows`, as ``markdown`` or ``csv``."""
    if fmt not in ("markdown", "csv"):
        raise ValueError(f"format must be markdown or csv, not {fmt!r}")
    rows = benchmark_rows(results_dir) if results_dir is not None else []
    for runs_dir in runs_dirs:
        rows += run_rows(runs_dir)
    chosen = select_columns(rows, columns)
    return to_markdown(rows, chosen) if fmt == "markdown" else to_csv(rows, chosen)


def main(argv: Sequence[str] | None = None) -> int:
    """``protoseg report [--results DIR] [--runs DIR ...] [--columns P,..] [--output FILE]``."""
    parser = ToolParser(
        prog="protoseg report",
        description="Collect benchmarks/results/*.json and the TensorBoard scalars of runs "
        "into one markdown or CSV table.",
    )
    parser.add_argument("--results", default="benchmarks/results", help="folder of *.json")
    parser.add_argument("--no-results", action="store_true", help="only the runs' rows")
    parser.add_argument("--runs", action="append", default=[], help="runs folder (repeat)")
    parser.add_argument("--columns", default=None, help="comma-separated fnmatch patterns")
    parser.add_argument("--format", choices=("markdown", "csv"), default=None)
    parser.add_argument("--output", default=None, help="file (default: stdout); .csv -> CSV")
    parser.add_argument(
        "--readme",
        action="store_true",
        help="the README's results table instead: the summary rows of the results' JSON "
        "files and of --published, grouped into fit / held-out / test",
    )
    parser.add_argument(
        "--published",
        default=None,
        help="with --readme: a JSON file of published figures' summary rows",
    )
    parser.add_argument(
        "--splice",
        default=None,
        metavar="FILE",
        help="with --readme: write the table into FILE between its results-table markers",
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    fmt = args.format or ("csv" if str(args.output).endswith(".csv") else "markdown")
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    try:
        if args.readme:
            from protoseg.summary import readme_table, splice

            link_root = Path(args.splice).parent if args.splice else Path(".")
            text = readme_table(args.results, args.published, link_root)
            if args.splice:
                path = Path(args.splice)
                write_text_atomic(path, splice(path.read_text(), text, str(path)))
                return 0
        else:
            text = report(None if args.no_results else args.results, args.runs, columns, fmt)
    except DataError as error:
        parser.error(str(error))
    if args.output is None:
        sys.stdout.write(text)
        return 0
    write_text_atomic(args.output, text)
    return 0
