"""The ``protoseg`` dispatcher: help, version and the tools answer without Lightning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from protoseg.commands import COMMANDS, main, usage

ROOT = Path(__file__).resolve().parents[1]

# Runs the console script's entry in a fresh interpreter and says which heavy modules it loaded.
PROBE = """
import sys
from protoseg.commands import main
try:
    main({argv!r})
except SystemExit as stopped:
    print("status", stopped.code)
print("loaded", sorted(m for m in ("torch", "lightning") if m in sys.modules))
"""


def _probe(*argv: str) -> subprocess.CompletedProcess[str]:
    code = PROBE.format(argv=list(argv))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )


def test_help_lists_every_command_with_its_description_without_importing_torch() -> None:
    done = _probe("--help")
    for name, command in COMMANDS.items():
        assert f"  {name}  " in done.stdout
        assert command.summary in done.stdout
    assert done.stdout.splitlines()[-1] == "loaded []"


@pytest.mark.parametrize("tool", ["report", "slurm", "chain", "score"])
def test_tools_answer_help_without_lightning(tool: str) -> None:
    done = _probe(tool, "--help")
    assert f"usage: protoseg {tool}" in done.stdout
    assert "lightning" not in done.stdout.splitlines()[-1]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--version"])
    assert capsys.readouterr().out.startswith("protoseg 0.")


def test_no_command_and_an_unknown_one_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([])
    assert stopped.value.code == 2 and capsys.readouterr().out == usage()
    with pytest.raises(SystemExit) as stopped:
        main(["fitt"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "protoseg: error: fitt: unknown command (did you mean fit? choose from "
        "fit, validate, test, predict, chain, score, report, dictionary, name-clusters, "
        "score-tissue, slurm)\n"
    )


def test_a_tool_status_is_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["report", "--results", "no/such/folder"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "protoseg: error: protoseg report: no/such/folder: results folder does not exist\n"
    )


def test_score_scores_without_torch_or_lightning() -> None:
    sample = "samples/monuseg_crops"
    done = _probe("score", "--predictions", f"{sample}/labels", "--root", sample)
    assert "| all | 6 | 1.0000 |" in done.stdout
    assert done.stdout.splitlines()[-1] == "loaded []"
