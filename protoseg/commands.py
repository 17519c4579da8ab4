"""The ``protoseg`` command: a light dispatcher over every subcommand.

It imports nothing heavy itself, so ``protoseg --help``, ``protoseg --version`` and the plain
tools (``score``, ``report``, ``slurm``, ``chain``) answer without loading Lightning: only the
subcommand asked for is imported. ``fit``, ``validate``, ``test`` and ``predict`` go to the
LightningCLI of :mod:`protoseg.cli`; every other command is a module with
``main(argv) -> int``. :data:`COMMANDS` is the one list of them: the top-level help, the
dispatch and the steps a chain file may name (:mod:`protoseg.chain`) all read it.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from protoseg.io.errors import reported


@dataclass(frozen=True)
class Command:
    """A ``protoseg`` subcommand.

    Attributes:
        module: the module that runs it: :mod:`protoseg.cli` for the LightningCLI
            subcommands, else a module with ``main(argv: Sequence[str] | None) -> int``.
        summary: its one-line description in ``protoseg --help``.
    """

    module: str
    summary: str

    @property
    def lightning(self) -> bool:
        """Whether it is a LightningCLI subcommand (a trainer method on a config's model)."""
        return self.module == LIGHTNING_CLI


LIGHTNING_CLI = "protoseg.cli"

#: Every subcommand, in the order ``protoseg --help`` lists them.
COMMANDS: dict[str, Command] = {
    "fit": Command(
        LIGHTNING_CLI,
        "train a stage: --config configs/<stage>/<data>.yaml --data.root DIR (resume: "
        "--ckpt_path last)",
    ),
    "validate": Command(
        LIGHTNING_CLI, "score a checkpoint on a data root's labelled images (--ckpt_path CKPT)"
    ),
    "test": Command(LIGHTNING_CLI, "score a checkpoint on a data root's test split"),
    "predict": Command(
        LIGHTNING_CLI,
        "write instance maps, overlays and GeoJSON of a folder or whole slides "
        "(--ckpt_path CKPT --output_dir DIR)",
    ),
    "chain": Command(
        "protoseg.chain",
        "run the steps of a chain file (configs/chains/<name>.yaml) in order, resumable, "
        "each step's time and figures in one JSON",
    ),
    "score": Command(
        "protoseg.scoring",
        "score a folder of predicted instance maps against a root's labels (Dice, AJI, PQ)",
    ),
    "report": Command(
        "protoseg.report",
        "one table of benchmarks/results/*.json and runs' TensorBoard scalars",
    ),
    "dictionary": Command(
        "protoseg.dictionary",
        "turn a prototype stage's clusters and their names into a prototype dictionary",
    ),
    "name-clusters": Command(
        "protoseg.naming",
        "name a prototype stage's clusters from the masks of a few images (simulated pathologist)",
    ),
    "score-tissue": Command(
        "protoseg.tissue_scoring",
        "score a folder of tissue class maps against a split's masks (IoU, mIoU, FwIoU)",
    ),
    "slurm": Command(
        "protoseg.slurm", "write an sbatch script that trains a config with DDP under SLURM"
    ),
}

HELP_FLAGS = ("-h", "--help")


def version() -> str:
    """The installed distribution's version (``pyproject.toml``), without importing torch."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("protoseg")
    except PackageNotFoundError:
        return "unknown (not installed)"


def usage() -> str:
    """The top-level help: what protoseg is, then every subcommand and its description."""
    width = max(len(name) for name in [*COMMANDS, "-h, --help"])
    lines = [
        "usage: protoseg [-h] [--version] COMMAND [ARGS ...]",
        "",
        "Label-free and weakly supervised segmentation of histopathology images: stages",
        "chained through explicit artifact paths, each run by one command.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()),
        "",
        "options:",
        f"  {'-h, --help':<{width}}  show this help and exit",
        f"  {'--version':<{width}}  print protoseg's version and exit",
        "",
        "`protoseg COMMAND --help` shows a command's options.",
    ]
    return "\n".join(lines) + "\n"


def run_command(name: str, argv: Sequence[str]) -> int:
    """Runs subcommand ``name`` with its arguments ``argv``; returns its exit status.

    Raises:
        KeyError: ``name`` is not in :data:`COMMANDS`.
    """
    command = COMMANDS[name]
    module = importlib.import_module(command.module)
    if command.lightning:
        module.main([name, *argv])
        return 0
    with reported():  # bad input: one line, status 2, as the LightningCLI subcommands
        return int(module.main(list(argv)) or 0)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``protoseg`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in HELP_FLAGS:
        sys.stdout.write(usage())
        if not args:
            raise SystemExit(2)
        return
    if args[0] == "--version":
        print(f"protoseg {version()}")
        return
    if args[0].startswith("-"):
        # Options before the subcommand (`protoseg --config C fit`) are LightningCLI's.
        importlib.import_module(LIGHTNING_CLI).main(args)
        return
    if args[0] not in COMMANDS:
        close = difflib.get_close_matches(args[0], list(COMMANDS), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        sys.stderr.write(
            f"protoseg: error: {args[0]}: unknown command ({hint}choose from "
            f"{', '.join(COMMANDS)})\n"
        )
        raise SystemExit(2)
    status = run_command(args[0], args[1:])
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
