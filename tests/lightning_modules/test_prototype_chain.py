"""configs/chains/wsss4luad_prototypes.yaml end to end on a tiny WSSS4LUAD-layout root: SimCLR
fit -> clusters + gallery -> simulated pathologist -> dictionary -> pseudo masks (scored and
written) -> semantic head -> predictions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protoseg.chain import main as chain_main

ROOT = Path(__file__).resolve().parents[2]
CHAIN = ROOT / "configs" / "chains" / "wsss4luad_prototypes.yaml"
SCORED = ("pseudo masks validation", "head fit", "head validation")


@pytest.mark.slow
def test_prototype_chain_end_to_end(
    tmp_path: Path, make_wsss_root: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    root = make_wsss_root(tmp_path / "wsss", n_train=4, n_val=3, n_test=0, size=64)
    run_dir = tmp_path / "chain"
    args = [
        str(CHAIN),
        "--run_dir",
        str(run_dir),
        f"--data.root={root}",
        "--data.crop_size=48",
        "--data.crops_per_epoch=4",
        "--data.batch_size=2",
        "--data.num_workers=0",
        "--trainer.max_steps=2",
        "--trainer.enable_progress_bar=false",
        f"--step-arg=ssl fit=--data.root={root / 'training'}",
        "--step-arg=ssl fit=--model.init_args.backbone.init_args.name=resnet10t",
        "--step-arg=clusters=--model.init_args.clusters=3",
        "--step-arg=clusters=--model.init_args.exemplars=2",
        "--step-arg=clusters=--model.init_args.patch_step=16",
        *(
            f"--step-arg={step}=--model.init_args.embedder.init_args.backbone=resnet10t"
            for step in ("clusters", "pseudo masks validation", "pseudo masks")
        ),
        f"--step-arg=naming=--root={root / 'val'}",
        "--step-arg=naming=--images=00",
        # the least purity name-clusters takes (it refuses 0): one patch of the 10 names a cluster
        "--step-arg=naming=--purity=0.1",
        *(f'--step-arg={step}=--data.val_exclude=["00"]' for step in SCORED),
        "--step-arg=head fit=--model.init_args.net.init_args.encoder=resnet10t",
        "--step-arg=predictions=--data.predict_dir=val",
    ]
    assert chain_main(args) == 0
    result = json.loads((run_dir / "result.json").read_text())
    steps = result["steps"]
    assert all(record["peak_rss_mib"] > 0 for record in steps.values())
    assert set(steps["pseudo masks validation"]["metrics"]) >= {"miou", "fwiou", "iou_tumor"}
    assert set(steps["head validation"]["metrics"]) >= {"miou", "fwiou", "iou_tumor"}
    assert (run_dir / "prototypes" / "gallery.html").is_file()
    names = json.loads((run_dir / "naming" / "names.json").read_text())
    assert names["named"] == sum(v != "ignore" for v in names["names"].values())
    for image in sorted((root / "training").glob("*.png")):
        codes = np.array(Image.open(run_dir / "pseudo_masks" / f"{image.stem}.png"))
        assert codes.shape == np.array(Image.open(image)).shape[:2]
        assert set(np.unique(codes).tolist()) <= {0, 1, 2, 3, 255}
    assert sorted(p.name for p in (run_dir / "predictions").glob("??.png")) == [
        "00.png",
        "01.png",
        "02.png",
    ]
