"""benchmarks/bcdata_sample.py: the real BCData sample laid out officially, configs/psm/bcdata.yaml
end to end on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.bcdata_sample import official_layout
from protoseg.cli import main
from protoseg.datamodules.bcdata import BCDataDataModule

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bcdata_sample(shared_data: Path) -> Path:
    sample = shared_data / "bcdata_sample"
    if not (sample / "test" / "images" / "0.png").is_file():
        pytest.skip(f"BCData sample not found under {sample}")
    return sample


def test_sample_in_the_official_layout_reads_its_32_positive_points(
    bcdata_sample: Path, tmp_path: Path
) -> None:
    points = official_layout(bcdata_sample, tmp_path / "root")
    assert points.shape == (32, 2)
    data = BCDataDataModule(str(tmp_path / "root"), num_workers=0)
    data.setup("validate")
    (batch,) = list(data.val_dataloader())
    assert batch["image"].shape == (1, 3, 640, 640)
    np.testing.assert_array_equal(batch["points"][0].numpy(), points)
    assert batch["point_classes"][0].tolist() == [1] * 32


@pytest.mark.slow
def test_bcdata_config_fits_and_scores_the_sample(
    bcdata_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    root = tmp_path / "root"
    official_layout(bcdata_sample, root)
    run = tmp_path / "run"
    main(
        [
            "fit",
            "--config=configs/psm/bcdata.yaml",
            f"--data.root={root}",
            "--data.crop_size=64",
            "--data.batch_size=2",
            "--data.num_workers=0",
            "--trainer.max_steps=2",
            "--trainer.check_val_every_n_epoch=1",
            f"--trainer.default_root_dir={run}",
            f"--trainer.logger.init_args.save_dir={run}",
            f"--trainer.callbacks.init_args.dirpath={run / 'ckpt'}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert (run / "ckpt" / "last.ckpt").is_file()
