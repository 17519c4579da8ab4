"""``protoseg slurm``: the sbatch script asks SLURM and Lightning for the right things."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from protoseg.commands import main
from protoseg.slurm import sbatch_script

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/ssl/simclr_monuseg.yaml"


def directives(script: str) -> dict[str, str]:
    """``#SBATCH --key=value`` lines as {key: value} (``--requeue`` -> "")."""
    found = {}
    for line in script.splitlines():
        if match := re.fullmatch(r"#SBATCH --([\w-]+)(?:=(.*))?", line):
            found[match[1]] = match[2] or ""
    return found


def srun_words(script: str) -> list[str]:
    """The srun command, continuation lines joined, split as the shell would."""
    text = script.replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("srun "))
    return shlex.split(line)


def test_script_requests_nodes_gpus_and_requeue() -> None:
    script = sbatch_script([CONFIG], nodes=2, gpus_per_node=4, time="12:00:00", partition="gpu")
    assert script.startswith("#!/bin/bash\n")
    assert directives(script) == {
        "job-name": "simclr_monuseg",
        "partition": "gpu",
        "nodes": "2",
        "ntasks-per-node": "4",  # one task per GPU: Lightning's SLURMEnvironment expects it
        "gres": "gpu:4",
        "cpus-per-task": "8",
        "time": "12:00:00",
        "signal": "SIGUSR1@90",
        "requeue": "",
        "open-mode": "append",
        "output": "runs/slurm/%x-%j.out",
    }


def test_srun_line_resumes_with_ddp_on_the_allocation() -> None:
    script = sbatch_script(
        [CONFIG, "extra.yaml"],
        nodes=3,
        gpus_per_node=2,
        time="1-00:00:00",
        partition="a100",
        job_name="sweep point",
        fit_args=["--seed_everything", "7"],
    )
    words = srun_words(script)
    # srun asks for the task's cores itself (Slurm >= 22.05 does not pass sbatch's on)
    assert words[:4] == ["srun", "--cpus-per-task=8", "protoseg", "fit"]
    configs = [words[i + 1] for i, w in enumerate(words) if w == "--config"]
    # The DDP preset after the stage configs; the allocation's sizes after the preset, which
    # sets devices: -1 and num_nodes: 1 (later arguments win).
    assert configs == [CONFIG, "extra.yaml", "configs/trainer/ddp.yaml"]
    after_preset = words[words.index("configs/trainer/ddp.yaml") :]
    assert after_preset[after_preset.index("--trainer.num_nodes") + 1] == "3"
    assert after_preset[after_preset.index("--trainer.devices") + 1] == "2"
    assert words[words.index("--ckpt_path") + 1] == "last"
    assert words[-2:] == ["--seed_everything", "7"]
    # one setting per continuation line, the launcher on the first
    block = script[script.index("srun ") :].split(" \\\n")
    assert block[0] == "srun --cpus-per-task=8 protoseg fit"
    assert all(line.startswith("  --") and line.count(" --") == 1 for line in block[1:])
    assert "#SBATCH --job-name=sweep point" in script
    assert "#SBATCH --time=1-00:00:00" in script


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"configs": []}, "config"),
        ({"nodes": 0}, "nodes"),
        ({"gpus_per_node": 0}, "gpus_per_node"),
        ({"time": "90"}, "time"),
        ({"partition": " "}, "partition"),
    ],
)
def test_bad_requests_are_refused(kwargs: dict, message: str) -> None:
    args = {"configs": [CONFIG], "nodes": 1, "gpus_per_node": 1, "time": "1:00:00"}
    args["partition"] = "gpu"
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        sbatch_script(**args)


def test_cli_writes_the_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "jobs" / "simclr.sbatch"
    logs = tmp_path / "logs"
    main(
        [
            "slurm",
            "--config",
            CONFIG,
            "--nodes",
            "2",
            "--gpus-per-node",
            "8",
            "--time",
            "04:00:00",
            "--partition",
            "gpu",
            "--log-dir",
            str(logs),
            "--output",
            str(out),
            "--",
            "--trainer.max_steps",
            "5000",
        ]
    )
    script = out.read_text()
    assert directives(script)["gres"] == "gpu:8"
    assert directives(script)["output"] == f"{logs}/%x-%j.out"
    assert logs.is_dir(), "sbatch does not create the log folder"
    assert srun_words(script)[-2:] == ["--trainer.max_steps", "5000"]
    assert not list(out.parent.glob(".*.tmp"))

    with pytest.raises(SystemExit):
        main(["slurm", "--config", "no/such.yaml", "--gpus-per-node", "1", "--time", "1:00:00",
              "--partition", "gpu"])  # fmt: skip
    assert "no/such.yaml: config file does not exist" in capsys.readouterr().err
