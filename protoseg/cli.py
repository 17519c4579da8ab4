"""The ``protoseg`` command: LightningCLI over every stage's module and datamodule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from protoseg.callbacks.prediction_writer import InstancePredictionWriter


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

    def before_predict(self) -> None:
        """Attaches the prediction writer, so that predictions land on disk, not in memory."""
        output_dir = self.config.predict.get("output_dir")
        if output_dir is None:
            output_dir = Path(self.trainer.default_root_dir) / "predictions"
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
        trainer_defaults={"default_root_dir": "runs"},
        args=args,
        run=run,
    )


def main(args: ArgsType = None) -> None:
    """Entry point of the ``protoseg`` console script."""
    build_cli(args)


if __name__ == "__main__":
    main()
