"""Checkpoints of :class:`~protoseg.lightning_modules.segmentation.SegmentationModule` saved
before its post-processing was an injected part (protoseg up to commit e596ce4).

Those held the split as eleven flags of the module (``instance_split``, ``marker_threshold``,
``foreground_threshold``, ``min_area``, ``min_distance``, ``min_peak_probability``,
``outline_opening``, ``centre_net``, ``centre_weights``, ``centre_offset``, ``centre_votes``)
and the centre detector's weights as ``centre_net.*``. :func:`upgrade_segmentation_checkpoint`
rewrites such a checkpoint as the strategy it amounts to, with the same figures: the
``protoseg`` commands do it as they read one (``--ckpt_path``), and the module does it as it
loads one.
"""

from __future__ import annotations

from typing import Any

#: The module's post-processing flags before they became a ``postprocess`` part.
LEGACY_FLAGS = (
    "instance_split",
    "marker_threshold",
    "foreground_threshold",
    "min_area",
    "min_distance",
    "min_peak_probability",
    "outline_opening",
    "centre_net",
    "centre_weights",
    "centre_offset",
    "centre_votes",
)
PACKAGE = "protoseg.postprocess"


def _present(hparams: dict[str, Any], *names: str, rename: dict[str, str] | None = None) -> dict:
    rename = rename or {}
    return {rename.get(name, name): hparams[name] for name in names if name in hparams}


def legacy_postprocess(hparams: dict[str, Any]) -> dict[str, Any]:
    """The ``postprocess`` config that the old flags in ``hparams`` amount to."""
    common = _present(
        hparams, "foreground_threshold", "min_area", "min_peak_probability", "outline_opening"
    )
    split = hparams.get("instance_split", "three_class")
    if split == "three_class":
        init_args = {**_present(hparams, "marker_threshold"), **common}
        return {"class_path": f"{PACKAGE}.three_class.ThreeClassWatershed", "init_args": init_args}
    distance = {**_present(hparams, "min_distance"), **common}
    if hparams.get("centre_net") is None:
        return {"class_path": f"{PACKAGE}.distance.DistanceSplit", "init_args": distance}
    detector = _present(
        hparams,
        "centre_weights",
        "centre_net",
        "centre_offset",
        "centre_votes",
        rename={"centre_weights": "detector"},
    )
    return {
        "class_path": f"{PACKAGE}.centre_guided.CentreGuidedSplit",
        "init_args": {**detector, **distance},
    }


def is_legacy(hparams: dict[str, Any]) -> bool:
    """Whether hyperparameters hold the old flags rather than a ``postprocess`` part.

    Those of another module (``_class_path``, as LightningCLI saves it, not a
    ``SegmentationModule``) never are: a PSM stage's ``min_area`` is its own.
    """
    class_path = hparams.get("_class_path")
    if isinstance(class_path, str) and not class_path.endswith(".SegmentationModule"):
        return False
    return "postprocess" not in hparams and any(flag in hparams for flag in LEGACY_FLAGS)


def upgrade_segmentation_hparams(hparams: dict[str, Any]) -> str | None:
    """Replaces the old flags of a head's hyperparameters by their ``postprocess`` config,
    in place; the strategy's class name, or None when there was nothing to upgrade."""
    if not is_legacy(hparams):
        return None
    config = legacy_postprocess(hparams)
    for flag in LEGACY_FLAGS:
        hparams.pop(flag, None)
    hparams["postprocess"] = config
    return config["class_path"].rsplit(".", 1)[-1]


def upgrade_segmentation_checkpoint(checkpoint: dict[str, Any]) -> str | None:
    """Upgrades a head's checkpoint in place: its hyperparameters
    (:func:`upgrade_segmentation_hparams`) and its detector's weights, ``centre_net.*`` ->
    ``postprocess.centre_net.*``. Returns the strategy's class name when it upgraded the
    hyperparameters. A checkpoint of today's module is left as it is."""
    upgraded = upgrade_segmentation_hparams(checkpoint.get("hyper_parameters") or {})
    state = checkpoint.get("state_dict")
    if isinstance(state, dict) and any(key.startswith("centre_net.") for key in state):
        checkpoint["state_dict"] = {
            (f"postprocess.{key}" if key.startswith("centre_net.") else key): value
            for key, value in state.items()
        }
    return upgraded
