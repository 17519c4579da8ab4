"""Reading checkpoint files safely and saying what they hold.

Every checkpoint protoseg reads (``--ckpt_path``, ``encoder_weights``, a backbone's ``weights``,
a centre detector, SAM weights) goes through :func:`read_checkpoint`:
``torch.load(weights_only=True)`` (tensors and plain containers, never arbitrary Python
objects), with every failure a
:class:`~protoseg.io.errors.DataError` naming the file. :func:`describe_checkpoint` says what a
file holds (a stage's Lightning checkpoint and its class, an encoder export, a state dict), so
that a wrong file is named with what it is and what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from protoseg.io.errors import DataError


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """Loads a checkpoint file on the CPU with ``weights_only=True``.

    Args:
        path: the file.
        what: how messages name it (``checkpoint``, ``encoder weights``).

    Returns:
        The file's dict (a Lightning checkpoint, an encoder export or a state dict).

    Raises:
        DataError: the file is missing, a folder, not a torch file (text, garbage, cut
            short), holds Python objects other than tensors and plain containers, or is not
            a dict.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} file does not exist")
    if path.is_dir():
        raise DataError(f"{path}: {what} is a folder, not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises KeyError, EOFError, RuntimeError, pickle errors
        text = str(error)
        unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsupported:
            raise DataError(
                f"{path}: {what} holds a Python object ({unsupported.group(1)}), not only "
                "tensors; protoseg loads checkpoints with weights_only=True"
            ) from None
        if "central directory" in text or isinstance(error, EOFError):
            problem = "cut short or corrupt"
        else:
            problem = "not a PyTorch checkpoint file"
        raise DataError(f"{path}: {what} is {problem} ({type(error).__name__})") from None
    if not isinstance(state, dict):
        raise DataError(f"{path}: {what} holds a {type(state).__name__}, not a checkpoint dict")
    return state


def is_lightning_checkpoint(state: Mapping[str, Any]) -> bool:
    """Whether a loaded file is a Lightning checkpoint (a stage's weights and training state)."""
    return "state_dict" in state and "pytorch-lightning_version" in state


def checkpoint_class(state: Mapping[str, Any]) -> str | None:
    """The ``module.Class`` a Lightning checkpoint of the protoseg CLI was made by, if known."""
    hparams = state.get("hyper_parameters")
    value = hparams.get("_class_path") if isinstance(hparams, Mapping) else None
    return value if isinstance(value, str) else None


def describe_checkpoint(state: Mapping[str, Any]) -> str:
    """What a loaded file holds, for messages: ``a SimCLRModule checkpoint (step 200)``."""
    if is_lightning_checkpoint(state):
        class_path = checkpoint_class(state)
        name = class_path.rpartition(".")[2] if class_path else "Lightning"
        return f"a {name} checkpoint (step {state.get('global_step', '?')})"
    if set(state) == {"backbone", "state_dict"}:
        return f"an encoder export ({state['backbone']} encoder weights)"
    if state and all(isinstance(value, torch.Tensor) for value in state.values()):
        return f"a state dict of {len(state)} tensors"
    return f"a dict of {', '.join(sorted(map(str, state))[:4])}"


def class_path_of(model: Any) -> str:
    """``module.Class`` of an object (or of a class), as configs and checkpoints name it."""
    cls = model if isinstance(model, type) else type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_stage_checkpoint(
    path: str | Path,
    state: Mapping[str, Any],
    class_path: str,
    wanted_by: str = "the config's model",
) -> None:
    """Refuses a file that is not a Lightning checkpoint of ``class_path``.

    Args:
        path: the file, for the message.
        state: what :func:`read_checkpoint` loaded from it.
        class_path: ``module.Class`` of the stage expected.
        wanted_by: who expects it, for the message (``the detector's stage``).

    Raises:
        DataError: naming the file, what it holds and the class expected.
    """
    expected = class_path.rpartition(".")[2]
    held = describe_checkpoint(state)
    if not is_lightning_checkpoint(state):
        hint = ""
        if set(state) == {"backbone", "state_dict"}:
            hint = " (give an encoder export as the network's encoder_weights)"
        raise DataError(f"{path}: holds {held}, not a {expected} checkpoint{hint}")
    found = checkpoint_class(state)
    if found is not None and found != class_path:
        raise DataError(
            f"{path}: holds {held} ({found}); {wanted_by} is {expected}: give a {expected} "
            "checkpoint"
        )


def weights_mismatch(path: str | Path, error: BaseException, class_name: str) -> DataError | None:
    """Lightning's "Error(s) in loading state_dict" for a checkpoint as one line naming the
    file, or None for any other error."""
    text = str(error)
    if "Error(s) in loading state_dict" not in text:
        return None
    details = [line.strip() for line in text.splitlines()[1:] if line.strip()]
    first = details[0][:200] if details else ""
    return DataError(f"{path}: its weights do not fit the config's {class_name}: {first}")
