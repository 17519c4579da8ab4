"""The ``protoseg`` command: LightningCLI over every stage's module and datamodule."""

from __future__ import annotations

import importlib
import signal
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import (
    ArgsType,
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
)
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from protoseg.callbacks.class_map_writer import ClassMapWriter, SlideClassMapWriter
from protoseg.callbacks.prediction_outputs import PredictionOutputs
from protoseg.callbacks.prediction_writer import InstancePredictionWriter
from protoseg.callbacks.preemption import PreemptionCheckpoint
from protoseg.callbacks.prototype_gallery import PrototypeGalleryWriter
from protoseg.callbacks.slide_writer import SlidePredictionWriter
from protoseg.commands import COMMANDS
from protoseg.commands import main as commands_main
from protoseg.datamodules.slide_predict import WSIPredictDataModule
from protoseg.distributed import destroy_process_group
from protoseg.guard import check_run, removed_on_failure
from protoseg.io.checkpoints import check_stage_checkpoint, read_checkpoint, weights_mismatch
from protoseg.io.class_maps import TissueClasses
from protoseg.io.errors import DataError, NoLabelsError, reported
from protoseg.lightning_modules.legacy import upgrade_segmentation_hparams
from protoseg.lightning_modules.prototypes import PrototypeModule
from protoseg.precision import resolve_precision
from protoseg.quiet import quiet_lightning
from protoseg.usage import argument_error, check_config_files, instantiation_error


class StageConfig(SaveConfigCallback):
    """Saves the run's config as ``config.yaml`` for ``fit`` and ``<stage>_config.yaml``
    otherwise, so that a ``predict`` into the folder of a fit (logger off) never replaces
    the config the checkpoint was trained with."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        name = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn
        self.config_filename = "config.yaml" if name == "fit" else f"{name}_config.yaml"
        super().setup(trainer, pl_module, stage)


class ProtosegCLI(LightningCLI):
    """LightningCLI with ``protoseg predict --output_dir DIR [--geojson false]``, and the
    checks of :mod:`protoseg.guard` before any subcommand runs.

    Models and datamodules are given in subclass mode (``class_path`` + ``init_args``), so any
    stage's module runs through the same four subcommands: fit, validate, test and predict.
    """

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            parser.add_argument(
                "--output_dir",
                type=str | None,
                default=None,
                help="Folder for <stem>.png instance maps (tissue: class maps), overlays and "
                "GeoJSON (default: <trainer.default_root_dir>/predictions).",
            )
            parser.add_argument(
                "--geojson",
                type=bool,
                default=True,
                help="Also write <stem>.geojson (false for pseudo masks that only train).",
            )
        if subcommand in ("validate", "test", "predict"):
            parser.add_argument(
                "--allow_random_weights",
                type=bool,
                default=False,
                help="Run without --ckpt_path, on the model's initial (random) weights.",
            )
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Gives the settings that two parts must share one source, the datamodule's ``mean``
        and ``std``: a stage's ``normalization`` (how it un-normalises images) and its view
        augmentation's ``mean`` / ``std`` (how it normalises the views it trains on). Where a
        class has no such setting the link is skipped; a value given for a linked setting
        is replaced by the datamodule's."""
        parser.link_arguments(
            ("data.init_args.mean", "data.init_args.std"),
            "model.init_args.normalization",
            compute_fn=normalization,
        )
        for key in ("mean", "std"):
            parser.link_arguments(
                f"data.init_args.{key}", f"model.init_args.augment.init_args.{key}"
            )

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """The parsers raise their errors (``exit_on_error=False``) instead of printing the
        whole usage: :meth:`parse_arguments` turns them into one line."""
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parses as LightningCLI does, keeping the command line's ``--model`` options.

        Raises:
            DataError: a config file is missing or not YAML, or an option is unknown or has a
                bad value (named, with the closest valid name for a misspelt one).
        """
        argv = sys.argv[1:] if args is None else args
        if isinstance(argv, list):
            check_config_files(argv)
        try:
            with warnings.catch_warnings():
                # `protoseg` and `protoseg chain` hand each subcommand its arguments:
                # LightningCLI warns whenever both `args` and sys.argv are given.
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
                super().parse_arguments(parser, args)
        except ArgumentError as error:
            command = argv[0] if isinstance(argv, list) and argv else None
            subparser = getattr(self, "_subcommand_parsers", {}).get(command, parser)
            raise argument_error(error, subparser) from None
        self._model_args = model_options(argv) if isinstance(argv, list) else []

    def instantiate_classes(self) -> None:
        """Instantiates as LightningCLI does; a constructor's error about a given value
        (``batch_size`` 0, a missing weights file) becomes a one-line :class:`DataError`
        naming the option."""
        try:
            super().instantiate_classes()
        except Exception as error:
            config = self.config.get(self.subcommand) if self.subcommand else self.config
            converted = instantiation_error(error, config)
            if converted is None:
                raise
            raise converted from error

    def _parse_ckpt_path(self) -> None:
        """With ``--ckpt_path``, the checkpoint's model settings over the config files', and
        the command line's ``--model`` options over both.

        LightningCLI (2.6) merges the checkpoint's hyperparameters over the whole parsed
        configuration, so ``protoseg validate --ckpt_path K --model.init_args.min_distance 3``
        silently ran with the checkpoint's value (Lightning-AI/pytorch-lightning#20801,
        #21455). The command line's options are parsed again over the merged configuration,
        and the settings a checkpoint took over from a config file are named on stderr.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand or not self.config[subcommand].get("ckpt_path"):
            return
        ckpt_path = self.config[subcommand].ckpt_path
        if ckpt_path not in ("last", "best", "hpc", "registry"):
            # Before LightningCLI reads it: a wrong file is named, not a traceback.
            state = read_checkpoint(ckpt_path)
            check_stage_checkpoint(ckpt_path, state, self.config[subcommand].model.class_path)
        before = self.config[subcommand].model.clone()
        self._merge_checkpoint_hparams(subcommand, self.config[subcommand].ckpt_path)
        if self._model_args:
            self.config = self.parser.parse_args(
                [subcommand, *self._model_args], namespace=self.config
            )
        after = self.config[subcommand].model
        given = [
            plain_key(token.split("=", 1)[0])
            for token in self._model_args
            if is_model_option(token)
        ]
        replaced = [
            key
            for key in changed_keys(before, after)
            if not any(covers(name, plain_key(f"--model.{key}")) for name in given)
        ]
        if replaced and rank_zero_only.rank == 0:
            sys.stderr.write(
                "protoseg: the checkpoint's model settings replace the config's for "
                f"{', '.join(sorted({plain_key(key).split('.')[0] for key in replaced}))} "
                "(set one with --model.NAME VALUE)\n"
            )

    def _merge_checkpoint_hparams(self, subcommand: str, ckpt_path: str) -> None:
        """LightningCLI's merge of a checkpoint's hyperparameters over the configuration,
        reading a segmentation head saved before its post-processing was a part as the
        strategy it amounts to (:mod:`~protoseg.lightning_modules.legacy`)."""
        if not Path(ckpt_path).is_file():
            return
        hparams = read_checkpoint(ckpt_path).get("hyper_parameters", {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        upgraded = upgrade_segmentation_hparams(hparams)
        if upgraded is not None and rank_zero_only.rank == 0:
            sys.stderr.write(
                f"protoseg: {ckpt_path}: saved before post-processing was a part; its "
                f"post-processing flags read as postprocess: {upgraded}\n"
            )
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except ArgumentError as error:
            message = argument_error(error, self.parser)
            raise DataError(f"{ckpt_path}: its model settings do not fit ({message})") from None

    def before_instantiate_classes(self) -> None:
        """Falls back from bf16 to float32 on CPUs that would only emulate bf16."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        trainer = config.trainer
        trainer.precision = resolve_precision(trainer.precision, trainer.accelerator)

    def _run_subcommand(self, subcommand: str) -> None:
        """Runs :func:`~protoseg.guard.check_run` first; a run that fails before its first
        step removes the log folder it created; a checkpoint whose weights do not fit the
        model is named."""
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        self.allow_random_weights = bool(config.get("allow_random_weights"))
        output_dir = self.predictions_dir() if subcommand == "predict" else None
        if self.trainer.logger is None:
            # --trainer.logger=false: the configs' learning-rate monitor has nothing to log
            # into (Lightning would stop the run with a MisconfigurationException).
            monitors = [c for c in self.trainer.callbacks if isinstance(c, LearningRateMonitor)]
            for callback in monitors:
                self.trainer.callbacks.remove(callback)
        check_run(self, subcommand, ckpt_path, output_dir)
        with removed_on_failure(self.trainer):
            try:
                super()._run_subcommand(subcommand)
            except RuntimeError as error:
                read = self.trainer.ckpt_path or ckpt_path  # "last" resolved
                mismatch = weights_mismatch(read, error, type(self.model).__name__)
                if ckpt_path is None or mismatch is None:
                    raise
                raise mismatch from error

    def predictions_dir(self) -> Path:
        """``--output_dir``, else ``<trainer.default_root_dir>/predictions``."""
        output_dir = self.config.predict.get("output_dir")
        if output_dir is None:
            return Path(self.trainer.default_root_dir) / "predictions"
        return Path(output_dir)

    def before_predict(self) -> None:
        """Attaches the prediction writer, so that predictions land on disk, not in memory
        (:meth:`prediction_writer`)."""
        output_dir = self.predictions_dir()
        writer = self.prediction_writer(output_dir)
        # After the writer: its on_predict_end (the last slides' files) comes first.
        self.trainer.callbacks += [writer, PredictionOutputs(output_dir)]
        print(f"protoseg: writing predictions to {Path(output_dir).resolve()}")

    def prediction_writer(self, output_dir: Path) -> L.Callback:
        """The writer of what the model predicts: clusters and a naming gallery for a
        prototype stage without a dictionary; class maps in the dataset's codes where the
        model (a prototype dictionary) or the datamodule names tissue classes, one per slide
        for a slide datamodule; else instance maps (one GeoJSON and preview per slide)."""
        model, datamodule = self.model, self.datamodule
        classes = getattr(model, "classes", None)
        if not isinstance(classes, TissueClasses):
            classes = getattr(datamodule, "classes", None)
        slides = isinstance(datamodule, WSIPredictDataModule)
        if isinstance(model, PrototypeModule) and not model.has_dictionary:
            if not isinstance(classes, TissueClasses):
                raise DataError(
                    f"{type(datamodule).__name__}: clustering needs the names a cluster may "
                    "get: use a tissue datamodule (class_names), e.g. WSSSDataModule"
                )
            hp = model.hparams
            settings = model.embedder.settings
            return PrototypeGalleryWriter(
                output_dir, classes, settings, hp.clusters, hp.exemplars, hp.seed
            )
        if isinstance(classes, TissueClasses):
            return (SlideClassMapWriter if slides else ClassMapWriter)(output_dir, classes)
        if slides:
            return SlidePredictionWriter(output_dir)
        return InstancePredictionWriter(output_dir, geojson=self.config.predict.geojson)

    def predict(self, model: L.LightningModule, **kwargs: Any) -> None:
        """Predicts without holding every image's result in memory (the writer has them)."""
        kwargs["return_predictions"] = False
        self.trainer.predict(model, **kwargs)

    def validate(self, model: L.LightningModule, **kwargs: Any) -> None:
        """Validates, keeping the logged metrics in ``self.results`` (``protoseg chain``); a
        datamodule without labelled images to score is an error."""
        self.results = self._scored(self.trainer.validate(model, **kwargs), "validate")

    def test(self, model: L.LightningModule, **kwargs: Any) -> None:
        """Tests, keeping the logged metrics in ``self.results`` (``protoseg chain``); a
        datamodule without labelled images to score is an error."""
        self.results = self._scored(self.trainer.test(model, **kwargs), "test")

    def _scored(self, results: list[Any], subcommand: str) -> list[Any]:
        if not results:
            where = getattr(self.datamodule, "root", None) or type(self.datamodule).__name__
            raise NoLabelsError(
                f"{where}: no labelled images to {subcommand} on (images/ without "
                "annotations_xml/ or labels/, or label_source=none)"
            )
        return results


def build_cli(args: ArgsType = None, run: bool = True) -> ProtosegCLI:
    """Parses ``args`` (``sys.argv`` when None) and, with ``run``, runs the subcommand.

    With ``run=False`` there is no subcommand: the arguments are the ``fit`` ones and the
    caller drives ``cli.trainer`` itself (benchmarks do).
    """
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, list) and any(token in HELP_TOKENS for token in argv):
        import_stages()
    quiet_lightning()
    return ProtosegCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        seed_everything_default=0,
        save_config_callback=StageConfig,
        save_config_kwargs={"overwrite": True},
        # Callbacks given here are added to those of the config (Lightning's LightningCLI).
        trainer_defaults={"default_root_dir": "runs", "callbacks": [PreemptionCheckpoint()]},
        parser_kwargs=SUBCOMMAND_HELP,
        args=args,
        run=run,
    )


#: Options that print help: the stages are imported first, so that the help of ``--model``
#: and ``--data`` lists protoseg's modules and datamodules among the classes they accept.
HELP_TOKENS = ("-h", "--help", "--model.help", "--data.help")

DATA_ROOT_HELP = (
    "--data.root DIR is the data: a folder with DIR/images/ (PNG, TIFF or JPEG; "
    "DIR/labels/ instance PNGs or DIR/annotations_xml/ Aperio XML only score, and train "
    "only a supervised head), or for the SSL configs a folder of tiles. "
)

#: Usage line and description of each LightningCLI subcommand (``protoseg fit --help``);
#: LightningCLI's own usage lists all ~90 options before the description.
SUBCOMMAND_HELP: dict[str, dict[str, str]] = {
    "fit": {
        "usage": "protoseg fit --config CONFIG [--data.root DIR] [--ckpt_path last] [OPTIONS]",
        "description": "Train a stage. "
        + DATA_ROOT_HELP
        + "CONFIG is a stage config, configs/<stage>/<data>.yaml; every option below "
        "overrides it (e.g. --trainer.max_steps 100, --trainer.accelerator gpu). "
        "--ckpt_path last resumes a run cut short.",
    },
    "validate": {
        "usage": "protoseg validate --config CONFIG --ckpt_path CKPT [--data.root DIR] [OPTIONS]",
        "description": "Score a checkpoint on the validation images of a data root. "
        + DATA_ROOT_HELP,
    },
    "test": {
        "usage": "protoseg test --config CONFIG --ckpt_path CKPT [--data.root DIR] [OPTIONS]",
        "description": "Score a checkpoint on the test images of a data root. " + DATA_ROOT_HELP,
    },
    "predict": {
        "usage": "protoseg predict --config CONFIG --ckpt_path CKPT [--data.root DIR] "
        "[--output_dir DIR] [OPTIONS]",
        "description": "Write <stem>.png instance maps, overlays and GeoJSON for every image "
        "of a data root (or, with --data configs/wsi/predict.yaml, for whole slides). "
        + DATA_ROOT_HELP,
    },
}


def import_stages() -> None:
    """Imports every module of :mod:`protoseg.datamodules` and
    :mod:`protoseg.lightning_modules`, so that jsonargparse knows them as subclasses."""
    import pkgutil

    import protoseg.datamodules
    import protoseg.lightning_modules

    for package in (protoseg.datamodules, protoseg.lightning_modules):
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")


def normalization(mean: list[float], std: list[float]) -> tuple[tuple[float, ...], ...]:
    """A datamodule's ``mean`` and ``std`` as a stage's ``normalization``."""
    return tuple(mean), tuple(std)


def is_model_option(token: str) -> bool:
    """Whether a command-line token is a ``--model`` option's name (``=VALUE`` or not)."""
    return token == "--model" or token.startswith(("--model.", "--model="))


def model_options(argv: list[str]) -> list[str]:
    """The ``--model...`` options of a command line, each with its value, in their order."""
    options: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if is_model_option(token):
            options.append(token)
            if "=" not in token:
                options.append(next(tokens, ""))
    return options


def plain_key(option: str) -> str:
    """An option's name without its ``init_args.`` parts (jsonargparse accepts both)."""
    return option.replace("init_args.", "")


def covers(option: str, key: str) -> bool:
    """Whether setting ``option`` sets ``key`` (itself, or a key inside it)."""
    return key == option or key.startswith(f"{option}.")


def changed_keys(before: Namespace, after: Namespace) -> list[str]:
    """Dotted keys whose value differs between two parsed model configurations."""
    old, new = dict(before.items()), dict(after.items())
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


def main(args: ArgsType = None) -> None:
    """Runs a LightningCLI subcommand (``fit``, ``validate``, ``test``, ``predict``).

    The ``protoseg`` console script is :func:`protoseg.commands.main`, which sends those
    here and the other commands to their own modules. A fit stopped by SIGTERM/SIGUSR1 (its
    ``last.ckpt`` saved) exits with status 128 + signal number. Bad input
    (:class:`~protoseg.io.errors.DataError`, a missing file) exits with status 2 and one line
    naming the file; ``PROTOSEG_TRACEBACK=1`` shows the traceback instead. Under DDP each rank
    of a run that ended normally destroys its process group before it exits
    (:func:`~protoseg.distributed.destroy_process_group`).
    """
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, list) and argv and argv[0] in COMMANDS and not COMMANDS[argv[0]].lightning:
        # A console script installed before protoseg.commands:main was the entry point.
        commands_main(argv)
        return
    try:
        # Bad input (a missing folder or checkpoint, a corrupt image, a wrong XML, a bad
        # option): one line naming the file or option, status 2 (protoseg.io.errors.reported).
        with reported():
            build_cli(args)
        # Only after a run that ended normally: on an error the other ranks may still wait
        # in a collective, and the process is going down anyway.
        destroy_process_group()
    except SIGTERMException as stopped:
        # Lightning raises it without a status on SIGTERM; PreemptionCheckpoint gives one.
        code = stopped.code if isinstance(stopped.code, int) and stopped.code else None
        raise SystemExit(code or 128 + signal.SIGTERM) from None


if __name__ == "__main__":
    main()
