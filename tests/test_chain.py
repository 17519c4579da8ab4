"""``protoseg chain``: chain files, the ledger of finished steps, and the shipped PSM chain on
a tiny root, resumed midway."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from protoseg.chain import LEDGER_NAME, ChainLedger, load_chain, main, plan
from protoseg.io.errors import DataError
from tests.conftest import MakeRoot

ROOT = Path(__file__).resolve().parents[1]
CHAINS = sorted((ROOT / "configs" / "chains").glob("*.yaml"))
SETTINGS = {"chain": "a.yaml", "steps": {"fit": ["--config=a.yaml"]}}


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


def test_ledger_refuses_to_resume_other_settings_or_a_broken_file(tmp_path: Path) -> None:
    ChainLedger(tmp_path, SETTINGS, resume=False).run("fit", lambda: {"seconds": 1.0})
    with pytest.raises(DataError, match="resume with the same ones"):
        ChainLedger(tmp_path, {**SETTINGS, "chain": "b.yaml"}, resume=True)
    (tmp_path / LEDGER_NAME).write_text('{"settings": ')
    with pytest.raises(DataError, match=f"{LEDGER_NAME}: not a chain ledger"):
        ChainLedger(tmp_path, SETTINGS, resume=True)


def test_resuming_with_a_step_changed_reruns_it_and_the_steps_after(tmp_path: Path) -> None:
    steps = {"fit": ["--config=a.yaml"], "masks": ["--x=1"], "head": ["--y=1"]}
    first = ChainLedger(tmp_path, {**SETTINGS, "steps": steps}, resume=False)
    for name in steps:
        first.run(name, lambda n=name: {"seconds": 1.0, "name": n})
    changed = {**steps, "masks": ["--x=2"]}
    resumed = ChainLedger(tmp_path, {**SETTINGS, "steps": changed}, resume=True)
    assert list(resumed.steps) == ["fit"]
    calls = [resumed.run(n, lambda n=n: {"seconds": 2.0, "name": n})["seconds"] for n in steps]
    assert calls == [1.0, 2.0, 2.0] and resumed.kept == ["fit"]
    saved = json.loads((tmp_path / LEDGER_NAME).read_text())
    assert saved["settings"]["steps"] == changed
    # Other steps (or their order) are another chain: refused.
    with pytest.raises(DataError, match="resume with the same ones"):
        ChainLedger(tmp_path, {**SETTINGS, "steps": {"fit": steps["fit"]}}, resume=True)


def test_without_resume_the_folder_starts_empty(tmp_path: Path) -> None:
    ChainLedger(tmp_path, SETTINGS, resume=False).run("fit", lambda: {"seconds": 1.0})
    (tmp_path / "old.ckpt").write_text("x")
    ledger = ChainLedger(tmp_path, SETTINGS, resume=False)
    assert ledger.steps == {} and not (tmp_path / "old.ckpt").exists()


def test_a_folder_not_a_chains_is_never_emptied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a chain's own folder (its ledger) or an empty one is cleared for a new run; a
    run folder that is, holds or lies inside the data the chain reads is refused."""
    mine = tmp_path / "results"
    (mine / "notes.txt").parent.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=rf"{mine}: chain run folder .* \(no {LEDGER_NAME}\)"):
        ChainLedger(mine, SETTINGS, resume=False)
    assert (mine / "notes.txt").read_text() == "mine"
    data = tmp_path / "project" / "data"
    (data / "images").mkdir(parents=True)
    chain = str(ROOT / "configs/chains/quickstart.yaml")
    for run_dir in (tmp_path / "project", data / "images" / "run"):
        assert main([chain, "--run_dir", str(run_dir), f"--data.root={data}"]) == 2
        err = capsys.readouterr().err
        assert f"{run_dir}: chain run folder (--run_dir)" in err and f"{data}, which" in err
    assert sorted(p.name for p in (tmp_path / "project").rglob("*")) == ["data", "images"]


@pytest.mark.parametrize("path", CHAINS, ids=lambda p: p.stem)
def test_shipped_chains_load_and_name_existing_configs(path: Path) -> None:
    chain = load_chain(path)
    assert chain.results, "a shipped chain names the rows it reports"
    for step in chain.steps:
        for arg in step.args:
            if arg.startswith("--config="):
                assert (ROOT / arg.split("=", 1)[1]).is_file(), f"{step.name}: {arg}"


def test_plan_prints_plain_commands_with_the_overrides_in_order(tmp_path: Path) -> None:
    chain = load_chain(ROOT / "configs/chains/monuseg_psm.yaml", tmp_path / "run")
    text = plan(chain, ["--data.root", "DATA"], {"head fit": ["--trainer.max_steps=3"]})
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(lines) == len(chain.steps)
    head = lines[[s.name for s in chain.steps].index("head fit")]
    run = (tmp_path / "run").as_posix()
    assert head.startswith("protoseg fit --config=configs/psm/segment_monuseg.yaml ")
    assert f"--data.pseudo_mask_dir={run}/pseudo_masks" in head
    detector = f"{run}/detector/checkpoints/last.ckpt"
    assert f"--model.init_args.postprocess.init_args.detector={detector}" in head
    # the file's overrides, then the command line's, then the step's own, then its folder
    order = [
        "--trainer.num_sanity_val_steps=0",
        "--data.root DATA",
        "--trainer.max_steps=3",
        f"--trainer.default_root_dir={run}/segment",
    ]
    assert [head.index(arg) for arg in order] == sorted(head.index(arg) for arg in order)
    assert "--trainer.max_steps=3" not in lines[0]


def test_the_psm_chain_names_how_its_head_predicts_new_images(tmp_path: Path) -> None:
    """The result JSON's predict_config and predict_command: the head's config with the
    Segment Anything refinement on, and the checkpoint the head fit writes."""
    chain = load_chain(ROOT / "configs/chains/monuseg_psm.yaml", tmp_path / "run")
    record = chain.predict_record()
    assert record["predict_config"] == [
        "configs/psm/segment_monuseg.yaml",
        "configs/refine/sam.yaml",
    ]
    for config in record["predict_config"]:
        assert (ROOT / config).is_file()
    head = chain.artifacts[next(s.writes for s in chain.steps if s.name == "head fit")]
    assert f"--ckpt_path={head.as_posix()}/checkpoints/last.ckpt" in record["predict_command"]
    assert record["predict_command"].endswith("--data.root ROOT --output_dir OUT")
    # make bench-monuseg-psm predicts the test images so.
    made = subprocess.run(
        ["make", "-n", "bench-monuseg-psm"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    line = next(line for line in made.splitlines() if "protoseg predict" in line)
    assert line.split().count("--config") == len(record["predict_config"])
    for config in record["predict_config"]:
        assert f"--config {config}" in line


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("steps: []\n", "steps: expected a list of steps"),
        ("steps:\n  - {name: a, command: fitt}\n", "step 1 (a): unknown command 'fitt'"),
        ("steps:\n  - {name: a, command: fit, args: ['{nowhere}/x']}\n", "{nowhere} names no"),
        ("steps:\n  - {name: a, command: fit, writes: x}\n", "writes: unknown artifact"),
        ("stepz: []\n", "unknown keys ['stepz']"),
        (
            "steps:\n  - {name: a, command: fit}\nresults:\n  - {row: r, step: b}\n",
            "results 1: unknown step 'b'",
        ),
        ("steps:\n  - {name: a, command: fit}\npredict: [x]\n", "predict: expected a mapping"),
        ("steps:\n  - {name: a, command: fit}\npredict: {args: ['{b}']}\n", "{b} names no"),
    ],
)
def test_a_bad_chain_file_is_named(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DataError, match=str(path)) as raised:
        load_chain(path)
    assert problem in str(raised.value)


def test_a_missing_input_stops_the_chain_before_any_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "chain.yaml"
    path.write_text(
        "artifacts: {masks: '{run_dir}/masks', head: '{run_dir}/head'}\n"
        "steps:\n"
        "  - {name: head fit, command: fit, args: ['--data.pseudo_mask_dir={masks}'],"
        " writes: head}\n"
    )
    assert main([str(path), "--run_dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'run' / 'masks'}: step 'head fit' reads artifact 'masks'" in error
    assert not (tmp_path / "run").exists()  # nothing made before the check


def test_a_tool_step_runs_and_its_failure_stops_the_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "chain.yaml"
    results = ROOT / "benchmarks" / "results"
    path.write_text(
        "steps:\n"
        f"  - {{name: table, command: report, args: [--results, {results}, --columns, x]}}\n"
        "  - {name: broken, command: report, args: [--results, '{run_dir}/none']}\n"
    )
    with pytest.raises(SystemExit) as stopped:
        main([str(path), "--run_dir", str(tmp_path / "run")])
    assert stopped.value.code == 2
    ledger = json.loads((tmp_path / "run" / LEDGER_NAME).read_text())
    assert list(ledger["steps"]) == ["table"] and ledger["steps"]["table"]["command"] == "report"
    assert "with --resume finishes the chain" in capsys.readouterr().err


TINY = [
    "--data.crop_size=64",
    "--data.crops_per_epoch=4",
    "--data.batch_size=2",
    "--data.num_workers=0",
    "--trainer.max_steps=2",
    "--trainer.enable_progress_bar=false",
]
HEAD_IN_A_WORKER = "--step-arg=head fit=--model.init_args.postprocess_workers=1"


def _psm_chain(data_root: Path, run_dir: Path, *extra: str) -> dict:
    """The shipped PSM chain on a tiny root; its result JSON."""
    chain = str(ROOT / "configs/chains/monuseg_psm.yaml")
    args = [chain, "--run_dir", str(run_dir), f"--data.root={data_root}", *TINY, *extra]
    assert main(args) == 0
    return json.loads((run_dir / "result.json").read_text())


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.*")}


def _metrics(result: dict) -> dict:
    return {name: step.get("metrics") for name, step in result["steps"].items()}


def test_a_chain_resumed_after_its_stage_fit_ends_as_an_uninterrupted_one(
    tmp_path: Path, make_monuseg_root: MakeRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resumed steps read the stage's last.ckpt, and the detector and head train again
    from their own seeds; the result JSON carries the rows of the README's table."""
    monkeypatch.chdir(ROOT)
    data_root = make_monuseg_root(tmp_path / "monuseg", n_images=3, size=64)
    run_dir = tmp_path / "run"
    full = _psm_chain(data_root, run_dir, HEAD_IN_A_WORKER)
    assert full["steps_from_earlier_runs"] == []
    masks = _files(run_dir / "pseudo_masks")
    assert {"img0.png", "img1.png", "img2.png"} <= set(masks)
    assert not any(name.endswith(".geojson") for name in masks)
    assert full["source"] and full["machine"]["cpu"] and full["command"].startswith("protoseg")
    rows = full["summary"]
    assert [(r["scored"], r["images"], r["labels"]) for r in rows] == [("fit", 3, "none")] * 2
    assert set(rows[1]["metrics"]) == {"aji", "object_dice", "pq", "pixel_dice"}
    assert rows[1]["metrics"]["aji"] == full["steps"]["head validation"]["metrics"]["aji"]
    head = (run_dir / "segment" / "checkpoints" / "last.ckpt").as_posix()
    assert f"--ckpt_path={head}" in full["predict_command"] and full["predict_config"]

    ledger = run_dir / LEDGER_NAME
    saved = json.loads(ledger.read_text())
    saved["steps"] = {"psm fit": saved["steps"]["psm fit"]}
    ledger.write_text(json.dumps(saved))
    resumed = _psm_chain(data_root, run_dir, HEAD_IN_A_WORKER, "--resume")
    assert resumed["steps_from_earlier_runs"] == ["psm fit"]
    assert _metrics(resumed) == _metrics(full)
    assert _files(run_dir / "pseudo_masks") == masks
    assert resumed["steps"]["psm fit"]["steps"] == resumed["steps"]["head fit"]["steps"] == 2

    # Other arguments are not the chain the ledger recorded.
    chain = str(ROOT / "configs/chains/monuseg_psm.yaml")
    assert main([chain, "--run_dir", str(run_dir), f"--data.root={data_root}", "--resume"]) == 2


def test_a_chain_runs_on_images_without_labels(
    tmp_path: Path, make_monuseg_root: MakeRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Your own folder: every step runs, and the validations, with nothing to score, record
    no metrics."""
    monkeypatch.chdir(ROOT)
    data_root = make_monuseg_root(tmp_path / "own", n_images=2, size=64, labels=())
    result = _psm_chain(data_root, tmp_path / "run")
    checks = [name for name in result["steps"] if name.endswith("validation")]
    assert checks == ["psm validation", "detector validation", "head validation"]
    assert all(result["steps"][name]["metrics"] is None for name in checks)
    assert {"img0.png", "img1.png"} <= set(_files(tmp_path / "run" / "pseudo_masks"))
    assert [row["metrics"] for row in result["summary"]] == [None, None]


def test_a_chain_on_a_split_scores_the_held_out_images_only(
    tmp_path: Path, make_monuseg_root: MakeRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every stage trains on the same images; the validations score the others."""
    monkeypatch.chdir(ROOT)
    data_root = make_monuseg_root(tmp_path / "monuseg", n_images=3, size=64)
    result = _psm_chain(data_root, tmp_path / "run", "--data.init_args.val_fraction=0.34")
    fits = [result["steps"][f"{name} fit"]["split"] for name in ("psm", "detector", "head")]
    assert fits == [{"train_images": 2, "val_images": 1, "held_out": True}] * 3
    assert [(r["scored"], r["images"]) for r in result["summary"]] == [("held-out", 1)] * 2
    # the pseudo masks cover every image, the held-out one included
    assert {"img0.png", "img1.png", "img2.png"} <= set(_files(tmp_path / "run" / "pseudo_masks"))


@pytest.mark.slow
@pytest.mark.parametrize("path", CHAINS, ids=lambda p: p.stem)
def test_every_shipped_chain_runs_end_to_end(
    path: Path, tmp_path: Path, make_monuseg_root: MakeRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path.stem == "wsss4luad_camsam":
        pytest.skip("a WSSS chain: tests/lightning_modules/test_cam_sam_chain.py runs it tiny")
    if path.stem == "wsss4luad_prototypes":
        pytest.skip("a WSSS chain: tests/lightning_modules/test_prototype_chain.py runs it tiny")
    monkeypatch.chdir(ROOT)
    data_root = make_monuseg_root(tmp_path / "monuseg", n_images=2, size=64)
    run_dir = tmp_path / "run"
    assert main([str(path), "--run_dir", str(run_dir), f"--data.root={data_root}", *TINY]) == 0
    result = json.loads((run_dir / "result.json").read_text())
    assert list(result["steps"]) == [step.name for step in load_chain(path).steps]
    assert all(row["metrics"] for row in result["summary"])
