"""CPU precision policy: bf16 only where the CPU computes it natively."""

from __future__ import annotations

import warnings

import pytest
import torch

from protoseg import precision
from protoseg.precision import resolve_precision, runs_on_cpu


@pytest.fixture
def no_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)


def test_bf16_on_cpu_without_native_support_falls_back_silently(no_native_bf16) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16-mixed", "cpu") == "32-true"


def test_bf16_kept_where_the_cpu_has_it(native_bf16) -> None:
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


def test_other_settings_are_left_alone(no_native_bf16) -> None:
    assert resolve_precision("32-true", "cpu") == "32-true"
    assert resolve_precision("16-mixed", "cpu") == "16-mixed"
    assert resolve_precision("bf16-mixed", "gpu") == "bf16-mixed"
    assert resolve_precision("bf16-mixed", "cuda") == "bf16-mixed"


def test_auto_accelerator_is_cpu_without_cuda() -> None:
    expected = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    assert runs_on_cpu("auto") is expected
    assert runs_on_cpu("cpu") is True
    assert runs_on_cpu("gpu") is False


def test_cli_applies_the_fallback(no_native_bf16, tmp_path) -> None:
    from protoseg.cli import build_cli

    args = [
        "--model=protoseg.lightning_modules.segmentation.SegmentationModule",
        "--model.net=protoseg.modules.networks.UNet",
        "--data=protoseg.datamodules.monuseg.MoNuSegDataModule",
        "--data.root=samples/monuseg_crops",
        "--trainer.accelerator=cpu",
        "--trainer.precision=bf16-mixed",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = build_cli(args, run=False)
    assert cli.trainer.precision == "32-true"
    assert cli.config.trainer.precision == "32-true", "the saved config says what ran"
