"""benchmarks/common.py: the source commit every benchmark record carries, and the overrides
every benchmarked stage trains with."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.common import (
    CPU_LIMIT_VARIABLES,
    ROOT,
    RUN_MARK,
    bench_overrides,
    fresh_run_dir,
    machine_info,
    source_state,
    write_result,
)
from protoseg.io.errors import DataError

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=bench", "-c", "user.email=bench@example.org"]
    done = subprocess.run(
        ["git", *identity, "-C", str(repo), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one committed source file and one committed result file."""
    root = tmp_path / "repo"
    (root / "benchmarks" / "results").mkdir(parents=True)
    (root / "stage.py").write_text("STEPS = 10\n")
    (root / "benchmarks" / "results" / "old.json").write_text("{}\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "start")
    return root


def test_clean_checkout_reports_its_commit(repo: Path) -> None:
    assert source_state(repo) == {"commit": _git(repo, "rev-parse", "HEAD"), "modified": False}


def test_edited_source_is_reported_as_modified(repo: Path) -> None:
    (repo / "stage.py").write_text("STEPS = 20\n")
    assert source_state(repo)["modified"] is True


def test_rewritten_results_and_new_files_do_not_count(repo: Path) -> None:
    """Benchmarks write results/*.json themselves, and runs/ holds untracked outputs."""
    (repo / "benchmarks" / "results" / "old.json").write_text('{"aji": 0.5}\n')
    (repo / "untracked.txt").write_text("scratch\n")
    assert source_state(repo)["modified"] is False


def test_outside_a_checkout_the_commit_is_unknown(tmp_path: Path, repo: Path) -> None:
    assert source_state(tmp_path) == {"commit": None}
    # A copy unpacked inside another project's checkout is not that project's commit.
    nested = repo / "vendor" / "protoseg"
    nested.mkdir(parents=True)
    assert source_state(nested) == {"commit": None}


def test_write_result_records_this_checkout(tmp_path: Path) -> None:
    path = write_result(tmp_path / "out" / "bench.json", {"aji": 0.5})
    record = json.loads(path.read_text())
    assert record["aji"] == 0.5
    assert record["source"]["commit"] == source_state(ROOT)["commit"]
    assert {"command", "date", "machine"} <= set(record)
    assert not list(path.parent.glob(".*.tmp"))


def test_machine_info_records_cpu_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CPU_LIMIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert machine_info()["cpu_limits"] == {}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert machine_info()["cpu_limits"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_bench_overrides_keep_the_configs_accelerator_unless_one_is_given() -> None:
    kept = bench_overrides("configs/psm/monuseg.yaml", "runs/x", "data")
    assert not any(a.startswith("--trainer.accelerator") for a in kept)
    moved = bench_overrides("configs/psm/monuseg.yaml", "runs/x", "data", accelerator="gpu")
    assert moved == [*kept, "--trainer.accelerator=gpu"]


def test_a_rerun_empties_only_a_benchmarks_own_folder(tmp_path: Path) -> None:
    run_dir = fresh_run_dir(tmp_path / "bench")
    (run_dir / "checkpoints").mkdir()
    assert sorted(p.name for p in fresh_run_dir(run_dir).iterdir()) == [RUN_MARK]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=f"{mine}: --run-dir holds files of something else"):
        fresh_run_dir(mine)
    assert (mine / "notes.txt").read_text() == "mine"


def test_shipped_postprocess_reads_the_configs_part_without_its_detector(tmp_path: Path) -> None:
    from benchmarks.common import shipped_postprocess

    shipped = shipped_postprocess(ROOT / "configs/psm/segment_monuseg.yaml")
    assert shipped["class_path"].endswith(".CentreGuidedSplit")
    assert "detector" not in shipped["init_args"]
    assert shipped["init_args"]["outline_opening"] == 4
    with pytest.raises(DataError, match="no such config"):
        shipped_postprocess(tmp_path / "missing.yaml")
    bare = tmp_path / "bare.yaml"
    bare.write_text("model:\n  class_path: x\n")
    with pytest.raises(DataError, match="bare.yaml: names no model.init_args.postprocess"):
        shipped_postprocess(bare)
