"""``make sweep-*`` expands to plain, readable protoseg command lines (checked with make -n)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(*args: str) -> list[list[str]]:
    """The command lines ``make -n`` prints, split as the shell would."""
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [shlex.split(line) for line in done.stdout.splitlines() if line.strip()]


def option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def test_sweep_ssl_is_one_fit_line_per_method_dataset_and_seed() -> None:
    lines = dry_run("sweep-ssl", "SEEDS=0 1", "SSL_METHODS=simclr dino")
    assert len(lines) == 4
    seen = set()
    for words in lines:
        assert words[0].endswith("protoseg") and words[1] == "fit"
        config, seed = option(words, "--config"), option(words, "--seed_everything")
        assert (ROOT / config).is_file()
        run_dir = option(words, "--trainer.default_root_dir")
        # Logs and checkpoints of every grid point stay in its own folder.
        assert option(words, "--trainer.logger.init_args.save_dir") == run_dir
        assert option(words, "--trainer.callbacks.init_args.dirpath") == f"{run_dir}/checkpoints"
        assert run_dir == f"runs/sweeps/ssl/{Path(config).stem}_s{seed}"
        assert words[-2:] == ["--ckpt_path", "last"], "a rerun resumes, never trains over it"
        seen.add((Path(config).stem, seed))
    assert seen == {(f"{m}_monuseg", s) for m in ("simclr", "dino") for s in ("0", "1")}


def test_sweep_segment_with_slurm_writes_and_submits_scripts() -> None:
    lines = dry_run("sweep-segment", "SLURM=1", "SEEDS=3", "SLURM_ARGS=--gpus-per-node 2 "
                    "--time 01:00:00 --partition debug")  # fmt: skip
    assert len(lines) == 1
    words = lines[0]
    assert words[0].endswith("protoseg") and words[1] == "slurm"
    run_dir = "runs/sweeps/segment/monuseg_segment_s3"
    assert option(words, "--output") == f"{run_dir}/job.sbatch"
    assert option(words, "--config") == "configs/monuseg/segment.yaml"
    assert option(words, "--seed_everything") == "3"
    assert words[-3:] == ["&&", "sbatch", f"{run_dir}/job.sbatch"]


def test_help_lists_the_sweeps_and_report() -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True
    )
    targets = {line.split()[0] for line in done.stdout.splitlines() if line.strip()}
    assert {"sweep-ssl", "sweep-segment", "report"} <= targets
