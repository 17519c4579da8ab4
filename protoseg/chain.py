"""``protoseg chain``: the steps of a chain file, run in order in one process, resumable.

A chain file (``configs/chains/<name>.yaml``) names the artifacts its steps hand on, as
paths, and the steps, each a ``protoseg`` subcommand with its arguments::

    name: monuseg_psm
    labels: none                      # what trains the stages (none: labels only score)
    run_dir: runs/chain_psm           # --run_dir replaces it
    artifacts:                        # {name} in an argument is the artifact's path
      psm: "{run_dir}/psm"
      pseudo_masks: "{run_dir}/pseudo_masks"
    overrides: [--trainer.check_val_every_n_epoch=1000]   # every Lightning step
    steps:
      - name: psm fit
        command: fit                  # fit / validate / test / predict, or any other command
        args: [--config=configs/psm/monuseg.yaml]
        writes: psm                   # a fit's run folder, a predict's --output_dir
      - name: pseudo masks
        command: predict
        args: [--config=configs/psm/monuseg.yaml,
               "--ckpt_path={psm}/checkpoints/last.ckpt", --geojson=false]
        writes: pseudo_masks
    results:                          # the rows a report shows (protoseg report --readme)
      - row: PSM pseudo masks (activation net + k-means)
        step: psm validation
    predict:                          # how the chain's model predicts new images
      args: [--config=configs/psm/segment_monuseg.yaml, "--ckpt_path={head}/checkpoints/last.ckpt"]

Every step runs as ``protoseg <command> <arguments>`` would, in this process: a Lightning step
(fit / validate / test / predict) gets its ``args``, then the file's ``overrides``, then the
command line's (``protoseg chain FILE --data.root DIR``: every Lightning step), then those
given to it alone (``--step-arg 'NAME=ARG'``), then where it writes: a fit's
``trainer.default_root_dir``, logger ``save_dir`` and checkpoint folder are the artifact it
``writes``, a predict's ``--output_dir`` is its artifact, and the other steps log into
``RUN_DIR/logs/<step>`` (a Lightning step's config needs a logger and, last in its callbacks,
a ``ModelCheckpoint``, as every shipped config has). A plain tool (``score``, ``report``,
...) gets its ``args`` and its ``--step-arg`` only. A step that reads an artifact (``{name}``
in an argument) that no earlier step wrote and that is missing stops the chain before it
starts.

Every finished step is recorded, with its wall time and figures, in ``RUN_DIR/chain.json``
(the ledger) and printed as it ends; ``--resume`` (same file) keeps the finished steps up to
the first whose arguments changed, starts again the one cut short (or changed) from an empty
folder and runs the rest. Every stage
seeds itself (``seed_everything`` of its config), so a resumed chain ends with the figures of
an uninterrupted one. The figures, wall times, the summary rows of ``results`` and the
command, commit, machine and date go to one JSON (``--output``, default
``RUN_DIR/result.json``), with ``predict``'s arguments as ``predict_config`` (its configs) and
``predict_command``: how to predict new images with what the chain made (e.g. its test set,
scored independently); the chain itself does not run it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protoseg.commands import COMMANDS, run_command
from protoseg.io.errors import DataError, NoLabelsError
from protoseg.io.images import write_text_atomic
from protoseg.io.outputs import check_output_folder, existing_paths, is_input_argument

LEDGER_NAME = "chain.json"
RESULT_NAME = "result.json"
#: Commands whose steps score (their time is not part of making a result).
SCORING_COMMANDS = ("validate", "test")

Record = dict[str, Any]
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Step:
    """One step of a chain.

    Attributes:
        name: unique within the chain (the ledger's and the results' key).
        command: a ``protoseg`` subcommand (:data:`protoseg.commands.COMMANDS`).
        args: its arguments, ``{run_dir}`` and ``{artifact}`` already replaced by paths.
        writes: the artifact it writes (a folder emptied before the step runs), or None.
        reads: the artifacts its arguments name.
    """

    name: str
    command: str
    args: list[str]
    writes: str | None = None
    reads: list[str] = field(default_factory=list)


@dataclass
class Chain:
    """A parsed chain file; see the module docstring for its keys."""

    path: Path
    name: str
    description: str
    labels: str
    run_dir: Path
    artifacts: dict[str, Path]
    overrides: list[str]
    steps: list[Step]
    results: list[dict[str, str]]
    predict: list[str] = field(default_factory=list)

    def predict_record(self) -> dict[str, Any]:
        """``predict_config`` (the ``--config`` files of ``predict``) and ``predict_command``
        (``protoseg predict`` with its arguments, ROOT and OUT standing for the images and
        the folder), or nothing when the file names no ``predict``."""
        if not self.predict:
            return {}
        configs = [arg.split("=", 1)[1] for arg in self.predict if arg.startswith("--config=")]
        words = ["protoseg", "predict", *self.predict, "--data.root", "ROOT", "--output_dir", "OUT"]
        return {"predict_config": configs, "predict_command": shlex.join(words)}

    def argv(self, step: Step, overrides: Sequence[str] = (), own: Sequence[str] = ()) -> list[str]:
        """The arguments ``step`` runs with (after its command), see the module docstring."""
        if not COMMANDS[step.command].lightning:
            return [*step.args, *own]
        # A fit's run folder is the artifact it writes; every other step logs into
        # RUN_DIR/logs/<step>, so that nothing lands outside the chain's folder.
        if step.command == "fit" and step.writes is not None:
            folder = self.artifacts[step.writes].as_posix()
        else:
            folder = (self.run_dir / "logs" / re.sub(r"\W+", "_", step.name)).as_posix()
        writes = [
            f"--trainer.default_root_dir={folder}",
            f"--trainer.logger.init_args.save_dir={folder}",
            f"--trainer.callbacks.init_args.dirpath={folder}/checkpoints",
        ]
        if step.command == "predict" and step.writes is not None:
            writes.append(f"--output_dir={self.artifacts[step.writes].as_posix()}")
        return [*step.args, *self.overrides, *overrides, *own, *writes]


def _require(condition: bool, path: Path, problem: str) -> None:
    if not condition:
        raise DataError(f"{path}: {problem}")


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def load_chain(path: str | Path, run_dir: str | Path | None = None) -> Chain:
    """Reads and checks a chain file; ``run_dir`` replaces the file's.

    Raises:
        DataError: the file is missing or not a chain (the message names the key at fault).
    """
    import yaml

    path = Path(path)
    _require(path.is_file(), path, "chain file does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not YAML ({error})") from error
    _require(isinstance(spec, dict), path, "expected a mapping with 'steps'")
    known = {"name", "description", "labels", "run_dir", "artifacts", "overrides", "steps"}
    known |= {"results", "predict"}
    unknown = set(spec) - known
    _require(not unknown, path, f"unknown keys {sorted(unknown)} (known: {sorted(known)})")
    root = Path(run_dir if run_dir is not None else spec.get("run_dir", f"runs/{path.stem}"))

    def expand(text: str, where: str, names: dict[str, Path]) -> tuple[str, list[str]]:
        used = PLACEHOLDER.findall(text)
        for name in used:
            _require(name in names, path, f"{where}: {{{name}}} names no artifact")
        return PLACEHOLDER.sub(lambda m: names[m.group(1)].as_posix(), text), used

    artifacts: dict[str, Path] = {}
    raw_artifacts = spec.get("artifacts") or {}
    _require(isinstance(raw_artifacts, dict), path, "artifacts: expected a mapping name: path")
    for name, value in raw_artifacts.items():
        _require(isinstance(value, str), path, f"artifacts.{name}: expected a path")
        artifacts[name] = Path(expand(value, f"artifacts.{name}", {"run_dir": root})[0])
    names = {"run_dir": root, **artifacts}
    overrides = spec.get("overrides") or []
    _require(_strings(overrides), path, "overrides: expected a list of arguments")
    raw_steps = spec.get("steps")
    _require(isinstance(raw_steps, list) and raw_steps, path, "steps: expected a list of steps")
    steps: list[Step] = []
    for index, raw in enumerate(raw_steps, 1):
        where = f"step {index}"
        _require(isinstance(raw, dict), path, f"{where}: expected a mapping")
        extra = set(raw) - {"name", "command", "args", "writes"}
        _require(not extra, path, f"{where}: unknown keys {sorted(extra)}")
        name, command = raw.get("name"), raw.get("command")
        _require(isinstance(name, str) and bool(name), path, f"{where}: needs a name")
        where = f"step {index} ({name})"
        _require(all(s.name != name for s in steps), path, f"{where}: name used twice")
        _require(
            command in COMMANDS and command != "chain",
            path,
            f"{where}: unknown command {command!r} (choose from "
            f"{', '.join(c for c in COMMANDS if c != 'chain')})",
        )
        _require(_strings(raw.get("args", [])), path, f"{where}: args: expected a list")
        writes = raw.get("writes")
        _require(writes is None or writes in artifacts, path, f"{where}: writes: unknown artifact")
        args, reads = [], []
        for arg in raw.get("args", []):
            text, used = expand(arg, where, names)
            args.append(text)
            # A tool step names its own artifact to write into it: not a read.
            reads += [u for u in used if u not in ("run_dir", writes) and u not in reads]
        steps.append(Step(name, command, args, writes, reads))
    results = spec.get("results") or []
    step_names = [s.name for s in steps]
    for index, row in enumerate(results, 1):
        ok = isinstance(row, dict) and {"row", "step"} <= set(row) <= {"row", "step", "metrics"}
        _require(ok, path, f"results {index}: expected keys row, step and (optional) metrics")
        _require(row["step"] in step_names, path, f"results {index}: unknown step {row['step']!r}")
    predict = spec.get("predict") or {}
    _require(
        isinstance(predict, dict)
        and set(predict) <= {"args"}
        and _strings(predict.get("args", [])),
        path,
        "predict: expected a mapping with args (a list of arguments)",
    )
    return Chain(
        path=path,
        name=str(spec.get("name", path.stem)),
        description=" ".join(str(spec.get("description", "")).split()),
        labels=str(spec.get("labels", "none")),
        run_dir=root,
        artifacts=artifacts,
        overrides=list(overrides),
        steps=steps,
        results=list(results),
        predict=[expand(arg, "predict", names)[0] for arg in predict.get("args", [])],
    )


def _unchanged_steps(saved: Any, settings: dict[str, Any]) -> list[str] | None:
    """The steps (names) whose arguments, and those of every step before them, are the
    same in ``saved`` and ``settings``; None when anything else differs (other settings,
    other steps or their order)."""
    if not isinstance(saved, dict):
        return None
    rest = {k: v for k, v in saved.items() if k != "steps"}
    if rest != {k: v for k, v in settings.items() if k != "steps"}:
        return None
    old, new = saved.get("steps"), settings.get("steps")
    if not isinstance(old, dict) or not isinstance(new, dict) or list(old) != list(new):
        return None
    unchanged = []
    for name, argv in new.items():
        if old[name] != argv:
            break
        unchanged.append(name)
    return unchanged


class ChainLedger:
    """The finished steps of a chain and what each measured, kept in ``run_dir/chain.json``.

    Args:
        run_dir: the chain's folder.
        settings: what the chain was started with (its steps' arguments). A resumed run must
            be started with the same, or the steps it keeps would not be its own; where only
            some steps' arguments changed (``settings["steps"]``: each step's arguments, in
            order), it keeps the finished steps before the first changed one and reruns
            that one and all after it. Arguments only: a config file edited in place is not
            seen.
        resume: keep the steps of an earlier run; without it (or without a ledger) the
            folder is emptied first, which only a chain's own folder (one holding its
            ledger) or an empty one may be.
        inputs: what the chain's steps read; the folder may not be, hold or lie inside one.

    Raises:
        DataError: on ``resume`` when the ledger was written with other settings, or is not
            a ledger (a file cut short or edited by hand); a folder that is not a chain's
            and not empty, or that is, holds or lies inside the chain's input data.
    """

    def __init__(
        self,
        run_dir: str | Path,
        settings: dict[str, Any],
        resume: bool,
        inputs: Sequence[Path] = (),
    ) -> None:
        self.path = Path(run_dir) / LEDGER_NAME
        self.settings = settings
        self.steps: dict[str, Record] = {}
        self.kept: list[str] = []
        self._reached: list[str] = []
        check_output_folder(run_dir, inputs, "chain run folder (--run_dir)")
        if resume and self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
                saved_settings, saved_steps = saved["settings"], saved["steps"]
            except (ValueError, KeyError, TypeError) as error:
                raise DataError(
                    f"{self.path}: not a chain ledger ({error!r}); drop --resume to start again"
                ) from error
            unchanged = (
                list(saved_steps)
                if saved_settings == settings
                else _unchanged_steps(saved_settings, settings)
            )
            if unchanged is None:
                raise DataError(
                    f"{self.path}: written by a chain started with other steps or arguments: "
                    "resume with the same ones, or drop --resume to start again"
                )
            self.steps = {k: v for k, v in saved_steps.items() if k in unchanged}
            changed = [k for k in saved_steps if k not in unchanged]
            if changed:
                print(
                    f"protoseg chain: arguments changed from step {changed[0]!r} on: "
                    f"rerunning {', '.join(changed)}"
                )
        else:
            run_dir = Path(run_dir)
            if run_dir.exists() and not self.path.is_file() and any(run_dir.iterdir()):
                raise DataError(
                    f"{run_dir}: chain run folder (--run_dir) holds files of something else "
                    f"(no {LEDGER_NAME}); give a new or empty --run_dir"
                )
            if run_dir.exists():
                print(f"protoseg chain: removing the previous run in {run_dir}")
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)

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
            return self.steps[name]
        # Steps run in order, so a record not yet reached belongs to a step after this one.
        self.steps = {k: v for k, v in self.steps.items() if k in self._reached}
        self._reached.append(name)
        for path in outputs:
            # What the chain wrote there before; outside its folder a step's own checks
            # decide (a fit refuses a used run folder, a predict a folder not protoseg's).
            if self.path.parent.resolve() in path.resolve().parents:
                shutil.rmtree(path, ignore_errors=True)
        record = step()
        self.steps[name] = record
        write_text_atomic(
            self.path,
            json.dumps({"settings": self.settings, "steps": self.steps}, indent=2) + "\n",
        )
        return record


def _rounded(metrics: dict[str, Any], prefix: str = "val/") -> dict[str, float]:
    """Metrics without their stage prefix (``val/``, ``test/``), rounded to 4 decimals."""
    return {k.split("/", 1)[-1]: round(float(v), 4) for k, v in metrics.items()}


def _split(datamodule: Any) -> dict[str, Any] | None:
    """How many images a datamodule trains and validates on, and whether none does both."""
    train = getattr(datamodule, "train_records", None)
    val = getattr(datamodule, "val_records", None)
    if train is None or val is None:
        return None
    trained = {record.stem for record in train}
    return {
        "train_images": len(train),
        "val_images": len(val),
        "held_out": bool(val) and trained.isdisjoint(record.stem for record in val),
    }


def _lightning_step(command: str, argv: list[str]) -> Record:
    """Runs ``protoseg <command> <argv>`` in this process; what it measured."""
    from protoseg.cli import build_cli
    from protoseg.distributed import destroy_process_group

    try:
        cli = build_cli([command, *argv])
    except NoLabelsError:
        # A label-free chain on images without labels: its scorings have nothing to score.
        destroy_process_group()
        return {"metrics": None}
    destroy_process_group()
    record: Record = {}
    if command == "fit":
        trainer, model = cli.trainer, cli.model
        figures = getattr(model, "fit_figures", None)
        checkpoint = trainer.checkpoint_callback
        record = {
            "checkpoint": Path(checkpoint.last_model_path).as_posix() if checkpoint else None,
            "steps": trainer.global_step,
            "max_steps": trainer.max_steps,
            "parameters": sum(p.numel() for p in model.parameters()),
            "precision": str(trainer.precision),
            "figures": figures() if callable(figures) else {},
        }
    elif command in SCORING_COMMANDS:
        results = getattr(cli, "results", None)
        record = {"metrics": _rounded(results[0]) if results and results[0] else None}
    split = _split(cli.datamodule)
    if split is not None:
        record["split"] = split
    root = getattr(cli.datamodule, "root", None)
    if isinstance(root, str | Path):
        record["data_root"] = Path(root).as_posix()
    return record


def _reset_peak_memory() -> None:
    """Resets this process's peak resident memory (Linux: ``clear_refs`` 5), so that the next
    :func:`_peak_memory_mib` is the peak of one step; elsewhere a no-op."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_memory_mib() -> int | None:
    """This process's peak resident memory since the last reset, MiB (Linux ``VmHWM``)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return None


def _run(step: Step, argv: list[str]) -> Record:
    """Runs one step; its command, wall seconds, this process's peak resident memory during
    it (``peak_rss_mib``; DataLoader workers not counted) and what it measured."""
    _reset_peak_memory()
    start = time.perf_counter()
    if COMMANDS[step.command].lightning:
        record = _lightning_step(step.command, argv)
    else:
        status = run_command(step.command, argv)
        if status:
            raise SystemExit(status)
        record = {}
    seconds = round(time.perf_counter() - start, 1)
    peak = _peak_memory_mib()
    return {"command": step.command, "seconds": seconds, "peak_rss_mib": peak, **record}


def describe(record: Record) -> str:
    """One line of what a step measured, for the console."""
    parts = []
    if "steps" in record:
        parts.append(f"{record['steps']} steps, {record['parameters']:,} parameters")
    if record.get("metrics"):
        parts.append(", ".join(f"{k} {v:.4f}" for k, v in record["metrics"].items()))
    elif record["command"] in SCORING_COMMANDS:
        parts.append("no labels to score")
    if record.get("split"):
        split = record["split"]
        held = "held out" if split["held_out"] else "not held out"
        parts.append(f"{split['train_images']} train / {split['val_images']} val images, {held}")
    return "; ".join(parts)


def summary_rows(chain: Chain, steps: dict[str, Record]) -> list[Record]:
    """The rows that ``chain.results`` names, in the common format
    (:func:`protoseg.summary.summary_row`).

    ``scored`` is ``held-out`` when no fit up to the row's step trained on an image that its
    validation scores, ``test`` for a test step, else ``fit``; ``wall_seconds`` adds up the
    steps up to it that are not scorings; ``data`` is the last two parts of the data root.
    """
    from protoseg.summary import rows_of, summary_row

    rows = []
    names = list(steps)
    for spec in chain.results:
        if spec["step"] not in steps:
            continue
        upto = [steps[n] for n in names[: names.index(spec["step"]) + 1]]
        record = steps[spec["step"]]
        fits = [r for r in upto if r["command"] == "fit"]
        held_out = bool(fits) and all(r.get("split", {}).get("held_out") for r in fits)
        scored = "test" if record["command"] == "test" else "held-out" if held_out else "fit"
        root = record.get("data_root")
        precisions = sorted({r["precision"] for r in fits if r.get("precision")})
        rows.append(
            summary_row(
                spec["row"],
                chain.labels,
                scored,
                rows_of(record.get("metrics"), spec.get("metrics")),
                images=(record.get("split") or {}).get("val_images"),
                data="/".join(Path(root).parts[-2:]) if root else None,
                wall_seconds=round(
                    sum(r["seconds"] for r in upto if r["command"] not in SCORING_COMMANDS), 1
                ),
                precision="/".join(precisions) or None,
            )
        )
    return rows


def _config_data(path: Path) -> dict[str, Any]:
    """A config file's datamodule arguments (``data.init_args`` or ``data``), if readable."""
    import yaml

    try:
        spec = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}  # the step itself names the file when it runs
    data = spec.get("data") if isinstance(spec, dict) else None
    if isinstance(data, dict) and isinstance(data.get("init_args"), dict):
        data = data["init_args"]
    return data if isinstance(data, dict) else {}


def chain_inputs(chain: Chain, argvs: dict[str, list[str]]) -> list[Path]:
    """The data the chain's Lightning steps read, as far as their arguments and config files
    show it (``root``, ``slides``, ``*_dir(s)`` of the datamodule), without the artifacts
    the chain itself writes: the run folder may not be, hold or lie inside any of it."""
    written = {chain.artifacts[s.writes].resolve() for s in chain.steps if s.writes}
    found: list[Path] = []
    for step in chain.steps:
        if not COMMANDS[step.command].lightning:
            continue
        values: dict[str, Any] = {}
        tokens = argvs[step.name]
        for index, token in enumerate(tokens):
            key, sep, value = token.partition("=")
            if not sep and index + 1 < len(tokens) and not tokens[index + 1].startswith("--"):
                value = tokens[index + 1]
            if key in ("--config", "--data") and value.endswith((".yaml", ".yml")):
                values.update(_config_data(Path(value)))
            elif key.startswith("--data."):
                values[key.removeprefix("--data.").removeprefix("init_args.")] = value
        for name, value in values.items():
            if is_input_argument(name):
                found += [p for p in existing_paths(value) if p.resolve() not in written]
    return list(dict.fromkeys(found))


def run_chain(
    chain: Chain,
    overrides: Sequence[str] = (),
    step_args: dict[str, list[str]] | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs (or, with ``resume``, finishes) ``chain``; its steps' records and summary.

    Raises:
        DataError: a step reads an artifact that is missing, or the ledger does not match.
    """
    step_args = step_args or {}
    unknown = set(step_args) - {s.name for s in chain.steps}
    if unknown:
        raise DataError(f"{chain.path}: --step-arg names no step of this chain: {sorted(unknown)}")
    argvs = {s.name: chain.argv(s, overrides, step_args.get(s.name, ())) for s in chain.steps}
    settings = {"chain": chain.path.as_posix(), "steps": argvs}
    written: set[str] = set()
    for step in chain.steps:  # before anything is written
        for name in step.reads:
            if name not in written and not chain.artifacts[name].exists():
                raise DataError(
                    f"{chain.artifacts[name]}: step {step.name!r} reads artifact {name!r}, "
                    "which no earlier step writes and which does not exist"
                )
        if step.writes:
            written.add(step.writes)
    ledger = ChainLedger(chain.run_dir, settings, resume, chain_inputs(chain, argvs))
    for index, step in enumerate(chain.steps, 1):
        head = f"protoseg chain: [{index}/{len(chain.steps)}] {step.name}"
        kept = step.name in ledger.steps
        if not kept:
            line = shlex.join(["protoseg", step.command, *argvs[step.name]])
            log(f"{head}: {line}")
        outputs = [chain.artifacts[step.writes]] if step.writes else []
        record = ledger.run(step.name, lambda s=step: _run(s, argvs[s.name]), outputs)
        state = "kept from an earlier run" if kept else f"{step.command} in {record['seconds']} s"
        details = describe(record)
        log(f"{head}: {state}" + (f": {details}" if details else ""))
    steps = ledger.steps
    return {
        "chain": chain.path.as_posix(),
        "name": chain.name,
        "description": chain.description,
        "labels_used_for_training": chain.labels != "none",
        "run_dir": chain.run_dir.as_posix(),
        "overrides": [*chain.overrides, *overrides],
        "steps": steps,
        "chain_wall_seconds": round(
            sum(r["seconds"] for r in steps.values() if r["command"] not in SCORING_COMMANDS), 1
        ),
        "steps_from_earlier_runs": ledger.kept,
        "summary": summary_rows(chain, steps),
        **chain.predict_record(),
    }


def plan(chain: Chain, overrides: Sequence[str], step_args: dict[str, list[str]]) -> str:
    """The steps as the plain commands they run, with the artifacts each reads and writes."""
    lines = [f"# {chain.name}: {chain.description}".rstrip(": "), f"# run_dir: {chain.run_dir}"]
    for index, step in enumerate(chain.steps, 1):
        argv = chain.argv(step, overrides, step_args.get(step.name, ()))
        reads = ", ".join(step.reads) or "-"
        lines.append(f"# [{index}] {step.name}: reads {reads}; writes {step.writes or '-'}")
        lines.append(shlex.join(["protoseg", step.command, *argv]))
    return "\n".join(lines) + "\n"


def _step_args(values: Sequence[str]) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for value in values:
        name, sep, arg = value.partition("=")
        if not sep or not arg:
            raise DataError(f"--step-arg {value!r}: expected 'STEP NAME=ARGUMENT'")
        parsed.setdefault(name, []).append(arg)
    return parsed


def main(argv: Sequence[str] | None = None) -> int:
    """``protoseg chain FILE [--run_dir DIR] [--resume] [--output JSON] [--plan] [ARGS ...]``."""
    parser = argparse.ArgumentParser(
        prog="protoseg chain",
        description="Run the steps of a chain file (configs/chains/<name>.yaml) in order, in "
        "one process. Every further argument (e.g. --data.root DIR, --trainer.max_steps=2) is "
        "given to every fit / validate / test / predict step.",
    )
    parser.add_argument("chain", help="chain file, e.g. configs/chains/monuseg_psm.yaml")
    parser.add_argument("--run_dir", default=None, help="the chain's folder (default: the file's)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"keep the steps RUN_DIR/{LEDGER_NAME} lists as finished (same file), up to the "
        "first whose arguments changed",
    )
    parser.add_argument(
        "--output", default=None, help=f"the result JSON (default: RUN_DIR/{RESULT_NAME})"
    )
    parser.add_argument(
        "--step-arg",
        action="append",
        default=[],
        metavar="'STEP=ARG'",
        help="an argument for one step alone, e.g. "
        "'head fit=--model.init_args.postprocess_workers=8' (repeat)",
    )
    parser.add_argument(
        "--plan", action="store_true", help="print the steps' commands and run nothing"
    )
    args, overrides = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    try:
        chain = load_chain(args.chain, args.run_dir)
        step_args = _step_args(args.step_arg)
    except DataError as error:
        sys.stderr.write(f"protoseg: error: {error}\n")
        return 2
    if args.plan:
        sys.stdout.write(plan(chain, overrides, step_args))
        return 0
    try:
        result = run_chain(chain, overrides, step_args, args.resume)
    except BaseException as error:
        ledger = chain.run_dir / LEDGER_NAME
        if ledger.is_file():
            sys.stderr.write(
                f"protoseg chain: the finished steps are kept in {ledger}: the same command "
                "with --resume finishes the chain\n"
            )
        if isinstance(error, DataError | FileNotFoundError):
            sys.stderr.write(f"protoseg: error: {error}\n")
            return 2
        raise
    from protoseg.provenance import command_line, write_result

    command = command_line(["protoseg", "chain", *(sys.argv[1:] if argv is None else argv)])
    output = Path(args.output) if args.output else chain.run_dir / RESULT_NAME
    write_result(output, result, command=command)
    print(f"protoseg chain: {chain.name} in {result['chain_wall_seconds']} s, wrote {output}")
    for row in result["summary"]:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in (row["metrics"] or {}).items())
        print(f"  {row['name']} ({row['scored']}): {metrics or 'no labels to score'}")
    return 0
