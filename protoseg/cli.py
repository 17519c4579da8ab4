"""The ``protoseg`` command: LightningCLI over every stage's module and datamodule."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from protoseg.callbacks.prediction_writer import InstancePredictionWriter
from protoseg.callbacks.preemption import PreemptionCheckpoint
from protoseg.callbacks.slide_writer import SlidePredictionWriter
from protoseg.datamodules.slide_predict import WSIPredictDataModule
from protoseg.distributed import destroy_process_group
from protoseg.io.errors import DataError
from protoseg.precision import resolve_precision


class ProtosegCLI(LightningCLI):
    """LightningCLI with ``protoseg predict --output_dir DIR``.

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
                help="Folder for <stem>.png instance maps, overlays and GeoJSON "
                "(default: <trainer.default_root_dir>/predictions).",
            )
        return parser

    def before_instantiate_classes(self) -> None:
        """Falls back from bf16 to float32 on CPUs that would only emulate bf16."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        trainer = config.trainer
        trainer.precision = resolve_precision(trainer.precision, trainer.accelerator)

    def before_predict(self) -> None:
        """Attaches the prediction writer, so that predictions land on disk, not in memory:
        one GeoJSON and preview per slide for a slide datamodule, else files per image."""
        output_dir = self.config.predict.get("output_dir")
        if output_dir is None:
            output_dir = Path(self.trainer.default_root_dir) / "predictions"
        if isinstance(self.datamodule, WSIPredictDataModule):
            writer: L.Callback = SlidePredictionWriter(output_dir)
        else:
            writer = InstancePredictionWriter(output_dir)
        self.trainer.callbacks.append(writer)
        print(f"protoseg: writing predictions to {Path(output_dir).resolve()}")

    def predict(self, model: L.LightningModule, **kwargs: Any) -> None:
        """Predicts without holding every image's result in memory (the writer has them)."""
        kwargs["return_predictions"] = False
        self.trainer.predict(model, **kwargs)


def build_cli(args: ArgsType = None, run: bool = True) -> ProtosegCLI:
    """Parses ``args`` (``sys.argv`` when None) and, with ``run``, runs the subcommand.

    With ``run=False`` there is no subcommand: the arguments are the ``fit`` ones and the
    caller drives ``cli.trainer`` itself (benchmarks do).
    """
    return ProtosegCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        # Callbacks given here are added to those of the config (Lightning's LightningCLI).
        trainer_defaults={"default_root_dir": "runs", "callbacks": [PreemptionCheckpoint()]},
        args=args,
        run=run,
    )


#: Plain argparse tools dispatched before LightningCLI parses, and their modules.
TOOLS = {"slurm": "protoseg.slurm", "report": "protoseg.report", "score": "protoseg.scoring"}


def main(args: ArgsType = None) -> None:
    """Entry point of the ``protoseg`` console script.

    ``protoseg slurm ...``, ``protoseg report ...`` and ``protoseg score ...`` are plain
    argparse tools, dispatched before LightningCLI parses; everything else is a LightningCLI
    subcommand. A fit stopped by SIGTERM/SIGUSR1 (its ``last.ckpt`` saved) exits with status
    128 + signal number. Bad input (:class:`~protoseg.io.errors.DataError`, a missing file)
    exits with status 2 and one line naming the file; ``PROTOSEG_TRACEBACK=1`` shows the
    traceback instead. Under DDP each rank of a run that ended normally destroys its process group
    before it exits (:func:`~protoseg.distributed.destroy_process_group`).
    """
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, list) and argv and argv[0] in TOOLS:
        # Only the tool asked for is imported: `protoseg score` loads the MoNuSeg datamodule
        # (albumentations, OpenCV), which `protoseg slurm` and `protoseg report` do not need.
        status = importlib.import_module(TOOLS[argv[0]]).main(argv[1:])
        if status:
            raise SystemExit(status)
        return
    try:
        build_cli(args)
        # Only after a run that ended normally: on an error the other ranks may still wait
        # in a collective, and the process is going down anyway.
        destroy_process_group()
    except (DataError, FileNotFoundError) as error:
        # Bad input (a missing folder or checkpoint, a corrupt image, a wrong XML): the message
        # names the file, and a traceback through Lightning would bury it.
        if os.environ.get("PROTOSEG_TRACEBACK"):
            raise
        sys.stderr.write(f"protoseg: error: {error}\n")
        raise SystemExit(2) from None
    except SIGTERMException as stopped:
        # Lightning raises it without a status on SIGTERM; PreemptionCheckpoint gives one.
        code = stopped.code if isinstance(stopped.code, int) and stopped.code else None
        raise SystemExit(code or 128 + signal.SIGTERM) from None


if __name__ == "__main__":
    main()
