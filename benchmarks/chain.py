"""The label-free chain that the PSM and patch-contrast benchmarks run, resumable step by step.

stage fit -> stage validation -> pseudo masks -> [detector fit -> detector validation] ->
head fit -> head validation. Every finished step is written to ``run_dir/chain.json`` with
what it measured, so that a run cut short (a job's time limit, a lent GPU's 10-minute calls)
can be rerun with ``--resume``: the finished steps are kept, a step that was cut short starts
again from an empty folder, and the validations and pseudo masks of a fit finished in an
earlier run read its ``last.ckpt``. Every stage seeds itself (``seed_everything`` of its
config), so a resumed chain ends with the figures of an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import bench_overrides, fresh_run_dir, rounded, timed
from protoseg.io.images import write_text_atomic

LEDGER_NAME = "chain.json"

Record = dict[str, Any]


def add_chain_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The arguments every chain benchmark takes; ``name`` names its run folder and result."""
    parser.add_argument("--data-root", default="../shared/data/monuseg/train")
    parser.add_argument("--output", default=f"benchmarks/results/{name}.json")
    parser.add_argument("--run-dir", default=f"runs/bench_{name.removeprefix('monuseg_')}")
    parser.add_argument("--segment-steps", type=int, default=None, help="override the config's")
    parser.add_argument(
        "--accelerator", default=None, help="every stage's trainer.accelerator (e.g. gpu)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"keep the steps that RUN_DIR/{LEDGER_NAME} lists as finished (same arguments)",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="ARG",
        help="a CLI argument added to every stage, e.g. --override=--trainer.max_steps=2",
    )
    parser.add_argument(
        "--head-override",
        action="append",
        default=[],
        metavar="ARG",
        help="a CLI argument added to the head alone, e.g. "
        "--head-override=--model.init_args.postprocess_workers=8",
    )


class ChainLedger:
    """The finished steps of a chain and what each measured, kept in ``run_dir/chain.json``.

    Args:
        run_dir: the chain's folder.
        settings: what the chain was started with (configs, data, overrides). A resumed run
            must be started with the same, or the steps it keeps would not be its own.
        resume: keep the steps of an earlier run; without it (or without a ledger) the
            folder is emptied first.

    Raises:
        ValueError: on ``resume`` when the ledger was written with other settings, or is
            not a ledger (a file cut short or edited by hand).
    """

    def __init__(self, run_dir: str | Path, settings: dict[str, Any], resume: bool) -> None:
        self.path = Path(run_dir) / LEDGER_NAME
        self.settings = settings
        self.steps: dict[str, Record] = {}
        self.kept: list[str] = []
        self._reached: list[str] = []
        if resume and self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
                saved_settings, saved_steps = saved["settings"], saved["steps"]
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(
                    f"{self.path}: not a chain ledger ({error!r}); drop --resume to start again"
                ) from error
            if saved_settings != settings:
                raise ValueError(
                    f"{self.path} was written by a chain started with {saved_settings}, "
                    f"not {settings}: resume with the same arguments, or drop --resume to "
                    "start again"
                )
            self.steps = saved_steps
        else:
            fresh_run_dir(run_dir)

    def run(self, name: str, step: Callable[[], Record], outputs: Sequence[Path] = ()) -> Record:
        """``step()``'s record, or the one kept from an earlier run.

        A step that runs first removes its ``outputs`` (what a run cut short may have left
        half written) and the records of the steps after it, which were made from its old
        outputs.
        """
        if name in self.steps:
            if name not in self._reached:
                self.kept.append(name)
                self._reached.append(name)
            print(f"benchmark: {name} finished in an earlier run, kept")
            return self.steps[name]
        # Steps run in order, so a record not yet reached belongs to a step after this one.
        self.steps = {k: v for k, v in self.steps.items() if k in self._reached}
        self._reached.append(name)
        for path in outputs:
            shutil.rmtree(path, ignore_errors=True)
        record = step()
        self.steps[name] = record
        self._write()
        return record

    def _write(self) -> None:
        payload = {"settings": self.settings, "steps": self.steps}
        write_text_atomic(self.path, json.dumps(payload, indent=2) + "\n")


class _LazyCli:
    """Builds a stage's CLI the first time a step of it runs (kept steps need none)."""

    def __init__(self, folder: Path, args: list[str]) -> None:
        self.folder = folder
        """Where the stage writes (emptied before its fit runs)."""
        self.args = args
        self._cli: Any = None
        self.fitted = False
        """Whether this process fitted the model (its weights are in memory)."""

    def __call__(self) -> Any:
        from protoseg.cli import build_cli

        if self._cli is None:
            self._cli = build_cli(self.args, run=False)
        return self._cli


def _checkpoint_unless_fitted(cli: _LazyCli, fit: Record) -> str | None:
    return None if cli.fitted else fit["checkpoint"]


def _split(datamodule: Any) -> dict[str, Any]:
    """How many images a stage trained and validated on, and whether none did both."""
    train, val = datamodule.train_records, datamodule.val_records
    trained = {record.stem for record in train}
    return {
        "train_images": len(train),
        "val_images": len(val),
        "held_out": bool(val) and trained.isdisjoint(record.stem for record in val),
    }


def _fit(stage: _LazyCli, describe: Callable[[Any], dict[str, Any]], label: str) -> Record:
    """Fits ``stage``'s model; its wall time, ``last.ckpt``, ``describe(cli)`` and its
    images (:func:`_split`)."""
    cli = stage()
    _, seconds = timed(cli.trainer.fit, cli.model, datamodule=cli.datamodule, label=label)
    stage.fitted = True
    return {
        "seconds": seconds,
        "checkpoint": Path(cli.trainer.checkpoint_callback.last_model_path).as_posix(),
        "figures": describe(cli),
        "split": _split(cli.datamodule),
    }


def _validate(stage: _LazyCli, fit: Record, label: str) -> Record:
    """Validates ``stage``'s model: the weights in memory, or those of ``fit``'s checkpoint.

    A root without labels (your own images) has nothing to score: its metrics are None.
    """
    cli = stage()
    results, seconds = timed(
        cli.trainer.validate,
        cli.model,
        datamodule=cli.datamodule,
        ckpt_path=_checkpoint_unless_fitted(stage, fit),
        label=label,
    )
    return {"seconds": seconds, "metrics": rounded(results[0]) if results else None}


def trained_figures(cli: Any) -> dict[str, Any]:
    """Parameter count, steps taken and step budget of a fitted stage."""
    return {
        "parameters": sum(p.numel() for p in cli.model.parameters()),
        "steps": cli.trainer.global_step,
        "max_steps": cli.trainer.max_steps,
    }


def label_free_chain(
    stage_config: str,
    segment_config: str,
    run_dir: str | Path,
    data_root: str,
    segment_steps: int | None = None,
    detector_config: str | None = None,
    accelerator: str | None = None,
    stage_figures: Callable[[Any], dict[str, Any]] = trained_figures,
    overrides: Sequence[str] = (),
    resume: bool = False,
    head_overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Runs (or, with ``resume``, finishes) a label-free chain in ``run_dir``.

    The stage trains into ``run_dir/stage`` and writes its pseudo masks (predict with an
    :class:`~protoseg.callbacks.prediction_writer.InstancePredictionWriter`) into
    ``run_dir/pseudo_masks``; with ``detector_config`` a centre detector trains on them into
    ``run_dir/detector`` and the head reads its ``last.ckpt`` (``postprocess.detector``); the head
    trains on the pseudo masks into ``run_dir/segment``. ``accelerator`` replaces every
    stage's ``trainer.accelerator`` (None keeps the configs'), ``overrides`` are CLI
    arguments added to every stage (``head_overrides`` to the head alone), and
    ``stage_figures(cli)`` describes the fitted stage.

    Returns the record of every step (wall seconds, validation metrics, checkpoints and
    figures, see :class:`ChainLedger`), the pseudo-mask folder and the names of the steps
    kept from an earlier run.
    """
    from protoseg.callbacks.prediction_writer import InstancePredictionWriter

    run_dir = Path(run_dir)
    settings = {
        "configs": [stage_config, detector_config, segment_config],
        "data_root": data_root,
        "segment_steps": segment_steps,
        "accelerator": accelerator,
        "overrides": list(overrides),
        "head_overrides": list(head_overrides),
    }
    ledger = ChainLedger(run_dir, settings, resume)
    pseudo_dir = run_dir / "pseudo_masks"

    def stage_cli(config: str, folder: str, *extra: str) -> _LazyCli:
        args = bench_overrides(config, run_dir / folder, data_root, accelerator)
        return _LazyCli(run_dir / folder, [*args, *extra])

    records: dict[str, Record] = {}

    def fit_and_validate(name: str, stage: _LazyCli, describe: Callable[[Any], dict]) -> None:
        fit = f"{name} fit"
        records[fit] = ledger.run(fit, lambda: _fit(stage, describe, fit), [stage.folder])
        check = f"{name} validation"
        records[check] = ledger.run(check, lambda: _validate(stage, records[fit], check))

    stage = stage_cli(stage_config, "stage", *overrides)
    fit_and_validate("stage", stage, stage_figures)

    def pseudo_masks() -> Record:
        cli = stage()
        cli.trainer.callbacks.append(InstancePredictionWriter(pseudo_dir, geojson=False))
        _, seconds = timed(
            cli.trainer.predict,
            cli.model,
            datamodule=cli.datamodule,
            return_predictions=False,
            ckpt_path=_checkpoint_unless_fitted(stage, records["stage fit"]),
            label="pseudo masks",
        )
        return {"seconds": seconds}

    records["pseudo masks"] = ledger.run("pseudo masks", pseudo_masks, [pseudo_dir])
    head_extra = [f"--data.pseudo_mask_dir={pseudo_dir}"]
    if detector_config is not None:
        detector = stage_cli(detector_config, "detector", *head_extra, *overrides)
        fit_and_validate("detector", detector, trained_figures)
        weights = records["detector fit"]["checkpoint"]
        head_extra.append(f"--model.init_args.postprocess.init_args.detector={weights}")
    if segment_steps is not None:
        head_extra.append(f"--trainer.max_steps={segment_steps}")
    fit_and_validate(
        "head",
        stage_cli(segment_config, "segment", *head_extra, *overrides, *head_overrides),
        trained_figures,
    )
    return {"steps": records, "pseudo_dir": pseudo_dir, "kept": ledger.kept}


def chain_figures(
    benchmark: str, configs: list[str], chain: dict[str, Any], stage_key: str
) -> dict[str, Any]:
    """The JSON figures of a :func:`label_free_chain` run: the stage's figures, wall times and
    pseudo-mask validation under ``stage_key``, then the detector's (if any) and the head's.

    ``chain_wall_seconds`` adds up the fits and the pseudo masks (not the validations, whose
    times are listed beside each stage's); ``steps_from_earlier_runs`` names the steps a
    resumed run kept. ``train_images`` and ``val_images`` are the head's;
    ``validation_is_held_out`` says whether no stage trained on an image the validations score
    (e.g. every stage run with ``--data.init_args.val_fraction=0.2``).
    """
    steps = chain["steps"]

    def trained(name: str) -> dict[str, Any]:
        return {
            **steps[f"{name} fit"]["figures"],
            "train_wall_seconds": steps[f"{name} fit"]["seconds"],
            "validation_wall_seconds": steps[f"{name} validation"]["seconds"],
        }

    detector = {}
    if "detector fit" in steps:
        detector["detector"] = {
            **trained("detector"),
            "validation": steps["detector validation"]["metrics"],
        }
    timed_steps = ("stage fit", "pseudo masks", "detector fit", "head fit")
    fits = [steps[k] for k in ("stage fit", "detector fit", "head fit") if k in steps]
    # Held out only when no stage trained on an image that a validation scores.
    held_out = all(fit["split"]["held_out"] for fit in fits)
    return {
        "benchmark": benchmark,
        "configs": configs,
        "train_images": steps["head fit"]["split"]["train_images"],
        "val_images": steps["head fit"]["split"]["val_images"],
        "labels_used_for_training": False,
        "validation_is_held_out": held_out,
        stage_key: {
            **trained("stage"),
            "pseudo_mask_wall_seconds": steps["pseudo masks"]["seconds"],
            "pseudo_mask_validation": steps["stage validation"]["metrics"],
        },
        **detector,
        "segment": {**trained("head"), "validation": steps["head validation"]["metrics"]},
        "chain_wall_seconds": round(sum(steps[k]["seconds"] for k in timed_steps if k in steps), 1),
        "steps_from_earlier_runs": chain["kept"],
        "pseudo_mask_dir": Path(chain["pseudo_dir"]).as_posix(),
        "checkpoint": steps["head fit"]["checkpoint"],
    }
