"""One-line messages for what a user gets wrong on the command line or in a config file.

jsonargparse reports an unknown option after a 45-line usage dump, a YAML syntax error as
``"<unicode string>", line 15`` and a constructor's ``ValueError`` inside a 70-line traceback
of union-type checks. Each function here turns one of those into a
:class:`~protoseg.io.errors.DataError` that names the config file or the option, with the
closest valid name for a misspelt one; ``protoseg`` prints it on one line and exits with 2.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from protoseg.io.errors import DataError, one_line

CONFIG_SUFFIXES = (".yaml", ".yml")


class ToolParser(argparse.ArgumentParser):
    """The argument parser of ``protoseg score``, ``report`` and ``slurm``: an error is a
    :class:`DataError` (one line, exit 2 through :func:`protoseg.cli.main`), not the usage
    followed by the message."""

    def error(self, message: str) -> NoReturn:
        raise DataError(f"{self.prog}: {message}")


def error_chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from or during, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        if current.__cause__ is not None or current.__suppress_context__:
            current = current.__cause__  # "raise ... from None" ends the chain
        else:
            current = current.__context__
    return chain


def closest(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the candidate closest to ``name``, or an empty string."""
    found = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f" (did you mean {found[0]}?)" if found else ""


def config_values(argv: Sequence[str]) -> list[str]:
    """The command line's values that name config files: ``--config FILE`` (``-c``), and any
    ``--group FILE`` whose value ends with .yaml or .yml."""
    values = []
    for index, token in enumerate(argv):
        option, equals, value = token.partition("=")
        if not equals:
            following = argv[index + 1] if index + 1 < len(argv) else ""
            value = following if token.startswith("-") else ""
        is_config = option in ("-c", "--config") or value.lower().endswith(CONFIG_SUFFIXES)
        if is_config and value and not value.startswith("-"):
            values.append(value)
    return values


def check_config_files(argv: Sequence[str]) -> None:
    """Refuses a missing config file or one that is not valid YAML, naming it.

    Raises:
        DataError: ``<file>: config file does not exist`` or ``<file>: line L, column C:
            <YAML problem>``.
    """
    for value in config_values(argv):
        path = Path(value)
        if not path.exists():
            # A value of --config may also be inline YAML ("--config '{...}'").
            if value.lower().endswith(CONFIG_SUFFIXES):
                raise DataError(f"{path}: config file does not exist")
            continue
        if path.is_dir():
            raise DataError(f"{path}: is a folder, not a config file")
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not a text config file ({error.reason})") from None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(error, "problem", None) or one_line(error)
            raise DataError(f"{path}: YAML syntax error, {where}{problem}") from None


def _parameters(class_path: str) -> list[str]:
    """The constructor parameters of the class at ``class_path`` (empty if not importable)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    except (ImportError, AttributeError, TypeError, ValueError):
        return []


def _options(parser: Any) -> list[str]:
    """Every ``--option`` string of a (sub)command parser."""
    return [s for action in getattr(parser, "_actions", []) for s in action.option_strings]


def argument_error(error: BaseException, parser: Any) -> DataError:
    """A jsonargparse parse error as one line naming the option (or config key).

    Args:
        error: what ``parse_args`` raised (``exit_on_error=False``), with its chain.
        parser: the subcommand's parser, whose options are the candidates for a misspelt
            trainer option or config key.
    """
    chain = error_chain(error)
    text = "\n".join(str(e) for e in chain)
    keys = list(dict.fromkeys(re.findall(r'Parser key "([^"]+)"', text)))
    keys = [k for k in keys if k != "init_args"]
    innermost = one_line(chain[-1]).replace("<class '", "").replace("'>", "")
    options = _options(parser)
    where = "--" + ".".join(keys) if keys else ""
    if found := re.search(r"Option '([^']+)' is not accepted", innermost):
        name = found.group(1)
        classes = re.findall(r"class_path '([\w.]+)'", text)
        candidates = _parameters(classes[-1]) if classes else []
        owner = classes[-1].rpartition(".")[2] if classes else "this class"
        return DataError(
            f"{where}.{name}: {owner} has no option {name!r}{closest(name, candidates)}"
        )
    if found := re.search(r"unrecognized arguments: (\S+)", innermost):
        name = found.group(1).split("=")[0]
        return DataError(f"{name}: unknown option{closest(name, options)}")
    if found := re.search(r"does not accept option '([^']+)'", innermost):
        name = found.group(1)
        keys_known = [o.removeprefix("--") for o in options]
        return DataError(f"{name}: unknown config key{closest(name, keys_known)}")
    if found := re.search(r"invalid choice: '([^']+)'", innermost):
        return DataError(f"{found.group(1)}: unknown subcommand ({innermost.split('(', 1)[-1]}")
    return DataError(f"{where or 'protoseg'}: {innermost}")


def _raising_instance(error: BaseException) -> Any:
    """The object whose ``__init__`` raised ``error`` (the innermost such frame), or None."""
    owner = None
    traceback = error.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code.co_name == "__init__" and "self" in frame.f_locals:
            owner = frame.f_locals["self"]
        traceback = traceback.tb_next
    return owner


def _option_of(config: Any, cls: type) -> str | None:
    """``--key`` of the config entry whose ``class_path`` is ``cls`` (``init_args`` left out)."""
    class_path = f"{cls.__module__}.{cls.__qualname__}"
    items = config.items() if hasattr(config, "items") else []
    for key, value in items:
        if key.endswith("class_path") and value == class_path:
            key = key.removesuffix("class_path").rstrip(".").replace(".init_args", "")
            return f"--{key}"
    return None


def instantiation_error(error: BaseException, config: Any) -> DataError | None:
    """A model's, datamodule's or trainer's constructor error as one line, or None for an
    error that is not about the given values (a bug: its traceback is kept).

    The innermost error decides: a :class:`DataError` or missing file keeps its message
    (it names the file); a ``ValueError``, ``TypeError`` or Lightning's
    ``MisconfigurationException`` is prefixed with the option of the class that raised it
    (``--data.batch_size: batch_size must be >= 1, got 0``).
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    chain = error_chain(error)
    for found in chain:
        if isinstance(found, (DataError, FileNotFoundError)):
            return DataError(one_line(found))
    innermost = chain[-1]
    if not isinstance(innermost, (ValueError, TypeError, MisconfigurationException)):
        return None
    owner = _raising_instance(innermost)
    message = one_line(innermost)
    if owner is None:
        return DataError(f"protoseg: {message}")
    cls = type(owner)
    if cls.__module__.startswith("lightning.pytorch.trainer"):
        return DataError(f"--trainer: {message}")  # the Trainer or its connectors
    option = _option_of(config, cls) or cls.__name__
    first = re.match(r"\w+", message)
    parameters = inspect.signature(cls.__init__).parameters
    if first and first.group(0) in parameters and option.startswith("--"):
        option = f"{option}.{first.group(0)}"
    return DataError(f"{option}: {message}")
