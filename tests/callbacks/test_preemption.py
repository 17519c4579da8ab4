"""A fit stopped by SIGTERM, SIGUSR1 or SIGINT (Ctrl-C) mid-epoch saves last.ckpt; the same
command resumes it to the same final step, every step trained exactly once, no extra
checkpoint file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from conftest import short_fit_args
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from protoseg.callbacks.preemption import PreemptionCheckpoint
from protoseg.cli import build_cli
from protoseg.io.checkpoints import read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS = 6  # 4 steps per epoch: the signal at step 2 lands mid-epoch


def fit_args(root: Path, run_dir: Path) -> list[str]:
    return [
        f"--config={ROOT / 'configs' / 'monuseg' / 'segment.yaml'}",
        f"--data.root={root}",
        "--data.crop_size=32",
        "--data.crops_per_epoch=8",
        "--data.batch_size=2",
        "--model.net.decoder_channels=[16,16,8,8,8]",
        "--model.tile_size=64",
        "--model.tile_overlap=16",
        *short_fit_args(run_dir, MAX_STEPS),
    ]


class StepLog(Callback):
    """Appends each finished global step to a file; signals this process after ``at_step``."""

    def __init__(self, path: Path, signum: int | None = None, at_step: int = 0) -> None:
        self.path = path
        self.signum = signum
        self.at_step = at_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        with self.path.open("a") as log:
            log.write(f"{trainer.global_step}\n")
        if self.signum is not None and trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)


def steps_in(checkpoint: Path) -> int:
    return read_checkpoint(checkpoint)["global_step"]


SIGNALS = [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT]


def default_ctrl_c() -> None:
    """Ctrl-C as a terminal delivers it. A suite started in the background (``nohup``, ``&``)
    inherits SIGINT ignored, and so would its fits: the callback then leaves SIGINT alone."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Python installs its KeyboardInterrupt handler


@pytest.fixture(autouse=True)
def ctrl_c_raises() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum", SIGNALS, ids=[s.name for s in SIGNALS])
def test_stopped_fit_resumes_to_the_same_step(
    signum: int, tiny_monuseg_root: Path, tmp_path: Path
) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "steps.log"
    first = build_cli(fit_args(tiny_monuseg_root, run_dir), run=False)
    assert any(isinstance(c, PreemptionCheckpoint) for c in first.trainer.callbacks)
    first.trainer.callbacks.insert(0, StepLog(log, signum, at_step=2))
    with pytest.raises(SIGTERMException) as stopped:
        first.trainer.fit(first.model, datamodule=first.datamodule)
    # Lightning's own SIGTERM stop has no status; protoseg.cli.main gives it 143.
    assert stopped.value.code == (None if signum == signal.SIGTERM else 128 + signum)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert steps_in(last) == 2
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL, "handlers restored"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    again = build_cli(fit_args(tiny_monuseg_root, run_dir), run=False)
    again.trainer.callbacks.insert(0, StepLog(log))
    again.trainer.fit(again.model, datamodule=again.datamodule, ckpt_path="last")
    assert again.trainer.global_step == MAX_STEPS
    assert log.read_text().split() == [str(s) for s in range(1, MAX_STEPS + 1)]
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    assert steps_in(last) == MAX_STEPS


def test_other_exceptions_save_nothing(tiny_monuseg_root: Path, tmp_path: Path) -> None:
    class Crash(Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            raise RuntimeError("bug")

    run_dir = tmp_path / "run"
    cli = build_cli(fit_args(tiny_monuseg_root, run_dir), run=False)
    cli.trainer.callbacks.insert(0, Crash())
    with pytest.raises(RuntimeError, match="bug"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()


STEP_LOG_MODULE = """
import time
from pathlib import Path
from lightning.pytorch.callbacks import Callback

class SlowStepLog(Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, *args) -> None:
        with self.path.open("a") as log:
            log.write(f"{trainer.global_step}\\n")
        time.sleep(0.5)  # room for the test's signal to land mid-run
"""


# Real processes: Ctrl-C (SIGINT) and kill (SIGTERM) in the default suite, SIGUSR1 slow.
@pytest.mark.parametrize(
    "signum",
    [
        signal.SIGTERM,
        signal.SIGINT,
        pytest.param(signal.SIGUSR1, marks=pytest.mark.slow),
    ],
    ids=["SIGTERM", "SIGINT", "SIGUSR1"],
)
def test_killed_protoseg_fit_resumes_with_the_same_command(
    signum: int, tiny_monuseg_root: Path, tmp_path: Path
) -> None:
    (tmp_path / "step_log_callback.py").write_text(STEP_LOG_MODULE)
    run_dir, log = tmp_path / "run", tmp_path / "steps.log"
    command = [
        sys.executable,
        "-m",
        "protoseg.cli",
        "fit",
        *fit_args(tiny_monuseg_root, run_dir),
        "--trainer.callbacks+=step_log_callback.SlowStepLog",
        f"--trainer.callbacks.init_args.path={log}",
        "--ckpt_path=last",
    ]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, preexec_fn=default_ctrl_c
    )
    try:
        deadline = time.monotonic() + 900
        while not (log.is_file() and "2" in log.read_text().split()):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "no step 2 within 900 s"
            time.sleep(0.05)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:  # a failed check must not leave the run behind
            process.kill()
            process.wait()
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "saved" in stderr and "--ckpt_path last to resume" in stderr, stderr
    stopped_at = steps_in(run_dir / "checkpoints" / "last.ckpt")
    assert 2 <= stopped_at < MAX_STEPS

    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert log.read_text().split() == [str(s) for s in range(1, MAX_STEPS + 1)]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert steps_in(run_dir / "checkpoints" / "last.ckpt") == MAX_STEPS


class BatchLog(Callback):
    """Records a fingerprint of every training batch; signals this process after ``at_step``."""

    def __init__(self, signum: int | None = None, at_step: int = 0) -> None:
        self.fingerprints: list[float] = []
        self.signum = signum
        self.at_step = at_step

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, output: Any, batch: Any, *_
    ) -> None:
        self.fingerprints.append(round(float(batch["image"].double().sum()), 3))
        if self.signum is not None and trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)


# Not at step 4, the last of epoch 0: see the exception in protoseg's resume_sampler.
@pytest.mark.parametrize("at_step", [2, 5], ids=["epoch0-mid", "epoch1-mid"])
def test_resumed_fit_trains_on_the_batches_of_an_uninterrupted_one(
    at_step: int, tiny_monuseg_root: Path, tmp_path: Path
) -> None:
    whole = build_cli(fit_args(tiny_monuseg_root, tmp_path / "whole"), run=False)
    reference = BatchLog()
    whole.trainer.callbacks.insert(0, reference)
    whole.trainer.fit(whole.model, datamodule=whole.datamodule)
    assert len(reference.fingerprints) == MAX_STEPS

    run_dir = tmp_path / "stopped"
    first = build_cli(fit_args(tiny_monuseg_root, run_dir), run=False)
    before = BatchLog(signal.SIGTERM, at_step)
    first.trainer.callbacks.insert(0, before)
    with pytest.raises(SIGTERMException):
        first.trainer.fit(first.model, datamodule=first.datamodule)
    again = build_cli(fit_args(tiny_monuseg_root, run_dir), run=False)
    after = BatchLog()
    again.trainer.callbacks.insert(0, after)
    again.trainer.fit(again.model, datamodule=again.datamodule, ckpt_path="last")
    assert before.fingerprints + after.fingerprints == reference.fingerprints
