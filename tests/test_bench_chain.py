"""benchmarks/chain.py: the ledger of finished steps, and a tiny PSM chain resumed midway."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.chain import LEDGER_NAME, ChainLedger, chain_figures, label_free_chain
from tests.conftest import MakeRoot

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"configs": ["a.yaml"], "data_root": "data"}


def test_ledger_keeps_finished_steps_and_reruns_the_rest(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    calls: list[str] = []

    def step(name: str) -> dict:
        calls.append(name)
        return {"seconds": 1.0, "name": name}

    ledger = ChainLedger(run_dir, SETTINGS, resume=False)
    ledger.run("fit", lambda: step("fit"))
    ledger.run("masks", lambda: step("masks"))
    # A step cut short: its half-written outputs are there, its record is not.
    (run_dir / "head" / "partial").mkdir(parents=True)

    resumed = ChainLedger(run_dir, SETTINGS, resume=True)
    assert resumed.run("fit", lambda: step("fit again")) == {"seconds": 1.0, "name": "fit"}
    resumed.run("head", lambda: step("head"), [run_dir / "head"])
    assert calls == ["fit", "masks", "head"]
    assert not (run_dir / "head").exists()
    # "masks" was skipped over, so its record (made from the old "fit") is gone.
    assert list(json.loads((run_dir / LEDGER_NAME).read_text())["steps"]) == ["fit", "head"]
    assert resumed.kept == ["fit"]


def test_ledger_refuses_to_resume_other_settings(tmp_path: Path) -> None:
    ChainLedger(tmp_path, SETTINGS, resume=False).run("fit", lambda: {"seconds": 1.0})
    with pytest.raises(ValueError, match="same arguments"):
        ChainLedger(tmp_path, {**SETTINGS, "data_root": "other"}, resume=True)


def test_a_broken_ledger_is_named(tmp_path: Path) -> None:
    (tmp_path / LEDGER_NAME).write_text('{"settings": ')
    with pytest.raises(ValueError, match=f"{LEDGER_NAME}: not a chain ledger"):
        ChainLedger(tmp_path, SETTINGS, resume=True)


def test_without_resume_the_folder_starts_empty(tmp_path: Path) -> None:
    ChainLedger(tmp_path, SETTINGS, resume=False).run("fit", lambda: {"seconds": 1.0})
    (tmp_path / "old.ckpt").write_text("x")
    ledger = ChainLedger(tmp_path, SETTINGS, resume=False)
    assert ledger.steps == {} and not (tmp_path / "old.ckpt").exists()


TINY = [
    "--data.crop_size=64",
    "--data.crops_per_epoch=4",
    "--data.batch_size=2",
    "--data.num_workers=0",
    "--trainer.max_steps=2",
    "--trainer.enable_progress_bar=false",
]


def _psm_chain(data_root: Path, run_dir: Path, resume: bool, *extra: str) -> dict:
    return label_free_chain(
        str(ROOT / "configs/psm/monuseg.yaml"),
        str(ROOT / "configs/psm/segment_monuseg.yaml"),
        run_dir,
        str(data_root),
        detector_config=str(ROOT / "configs/psm/detect_monuseg.yaml"),
        overrides=[*TINY, *extra],
        resume=resume,
        # the head's split in a worker process, as on a GPU machine
        head_overrides=["--model.init_args.postprocess_workers=1"],
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.*")}


def _metrics(chain: dict) -> dict:
    return {name: step.get("metrics") for name, step in chain["steps"].items()}


def test_a_chain_resumed_after_its_stage_fit_ends_as_an_uninterrupted_one(
    tmp_path: Path, make_monuseg_root: MakeRoot
) -> None:
    """The stage's validation and pseudo masks then read its last.ckpt, and the detector and
    head train again from their own seeds."""
    data_root = make_monuseg_root(tmp_path / "monuseg", n_images=3, size=64)
    run_dir = tmp_path / "run"
    full = _psm_chain(data_root, run_dir, resume=False)
    assert full["kept"] == []
    masks = _files(run_dir / "pseudo_masks")
    assert {"img0.png", "img1.png", "img2.png"} <= set(masks)

    ledger = run_dir / LEDGER_NAME
    saved = json.loads(ledger.read_text())
    saved["steps"] = {"stage fit": saved["steps"]["stage fit"]}
    ledger.write_text(json.dumps(saved))
    resumed = _psm_chain(data_root, run_dir, resume=True)

    assert resumed["kept"] == ["stage fit"]
    assert _metrics(resumed) == _metrics(full)
    assert _files(run_dir / "pseudo_masks") == masks
    figures = chain_figures("tiny", [], resumed, "psm")
    assert figures["steps_from_earlier_runs"] == ["stage fit"]
    assert figures["psm"]["steps"] == 2 and figures["segment"]["steps"] == 2
    assert figures["train_images"] == figures["val_images"] == 3
    assert figures["validation_is_held_out"] is False
    assert Path(figures["checkpoint"]).is_file()

    # The resumed steps read the stage's weights from its checkpoint, not a fresh init.
    Path(saved["steps"]["stage fit"]["checkpoint"]).unlink()
    ledger.write_text(json.dumps(saved))
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        _psm_chain(data_root, run_dir, resume=True)


def test_a_chain_runs_on_images_without_labels(tmp_path: Path, make_monuseg_root: MakeRoot) -> None:
    """Your own folder: every step runs, and the validations, with nothing to score, record
    no metrics."""
    data_root = make_monuseg_root(tmp_path / "own", n_images=2, size=64, labels=())
    chain = _psm_chain(data_root, tmp_path / "run", resume=False)
    checks = [name for name in chain["steps"] if name.endswith("validation")]
    assert checks == ["stage validation", "detector validation", "head validation"]
    assert all(chain["steps"][name]["metrics"] is None for name in checks)
    assert {"img0.png", "img1.png"} <= set(_files(tmp_path / "run" / "pseudo_masks"))
    figures = chain_figures("own", [], chain, "psm")
    assert figures["psm"]["pseudo_mask_validation"] is None
    assert figures["segment"]["validation"] is None and Path(figures["checkpoint"]).is_file()


def test_a_chain_on_a_split_scores_the_held_out_images_only(
    tmp_path: Path, make_monuseg_root: MakeRoot
) -> None:
    """Every stage trains on the same images; the validations score the others."""
    data_root = make_monuseg_root(tmp_path / "monuseg", n_images=3, size=64)
    split = "--data.init_args.val_fraction=0.34"
    chain = _psm_chain(data_root, tmp_path / "run", False, split)
    fits = [chain["steps"][f"{name} fit"]["split"] for name in ("stage", "detector", "head")]
    assert fits == [{"train_images": 2, "val_images": 1, "held_out": True}] * 3
    figures = chain_figures("split", [], chain, "psm")
    assert (figures["train_images"], figures["val_images"]) == (2, 1)
    assert figures["validation_is_held_out"] is True
    # the pseudo masks cover every image, the held-out one included
    assert {"img0.png", "img1.png", "img2.png"} <= set(_files(tmp_path / "run" / "pseudo_masks"))
