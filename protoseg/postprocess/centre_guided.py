"""``CentreGuidedSplit``: the distance split, its landscape shaped by a centre detector.

The detector of the PSM chain
(:class:`~protoseg.lightning_modules.centre_detector.CentreDetectorModule`) is part of this
strategy: its network is built from the detector's own checkpoint (``detector``: its
``hyper_parameters.net``), frozen, run beside the head (:meth:`CentreGuidedSplit.guide`), and
its weights travel in the head's checkpoint. Its heatmap (and, with ``centre_votes``, the
centre votes of its offsets) reshapes the distance transform's landscape, so that fused clumps
are cut between the nuclei it sees.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from protoseg.io.checkpoints import check_stage_checkpoint, is_lightning_checkpoint, read_checkpoint
from protoseg.io.errors import DataError
from protoseg.modules.centre_votes import vote_heatmap
from protoseg.modules.centres import centre_maps
from protoseg.modules.postprocess import most_convex_candidates
from protoseg.modules.pseudo_masks import binary_to_instances
from protoseg.postprocess.distance import DistanceSplit

#: The stage whose checkpoint ``detector`` names.
CENTRE_DETECTOR = "protoseg.lightning_modules.centre_detector.CentreDetectorModule"
#: Datamodule settings the detector and the head must share: normalisation and µm per px.
SHARED_DATA_SETTINGS = ("mean", "std", "mpp")


def read_detector(path: str | Path) -> dict[str, Any]:
    """A centre detector's file as a checkpoint dict: a Lightning checkpoint of
    :class:`~protoseg.lightning_modules.centre_detector.CentreDetectorModule`, or a plain
    state dict of its network (then ``{"state_dict": {"net.<key>": ...}}``).

    Raises:
        DataError: no such file, not a checkpoint (:func:`~protoseg.io.checkpoints.
            read_checkpoint`), or another stage's Lightning checkpoint (a segmentation
            head's network may have the detector's shapes).
    """
    file = Path(path)
    saved = read_checkpoint(file, "centre detector checkpoint (detector)")
    if is_lightning_checkpoint(saved):
        check_stage_checkpoint(file, saved, CENTRE_DETECTOR, "the detector's stage")
    if "state_dict" not in saved:
        return {"state_dict": {f"net.{key}": value for key, value in saved.items()}}
    return saved


def build_network(spec: Mapping[str, Any]) -> nn.Module:
    """The network of a ``{class_path, init_args}`` config, as LightningCLI builds it."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=nn.Module)
    return parser.instantiate_classes(parser.parse_object({"net": dict(spec)})).net


def detector_network(path: str | Path, saved: Mapping[str, Any]) -> tuple[nn.Module, dict]:
    """The network the detector ``saved`` (read from ``path``) was trained with, untrained
    (:meth:`CentreGuidedSplit.prepare_fit` loads its weights), and its config."""
    hparams = saved.get("hyper_parameters") or {}
    spec = hparams.get("net")
    if not isinstance(spec, Mapping) or "class_path" not in spec:
        raise DataError(
            f"{path}: holds no network config (hyper_parameters.net, written when the "
            "detector is fitted with the protoseg CLI): give CentreGuidedSplit its centre_net"
        )
    return build_network(spec), dict(spec)


def refuse_votes_without_offsets(path: str | Path, saved: Mapping[str, Any]) -> None:
    """Refuses, naming the file, a detector whose offsets ``centre_votes`` cannot trust:
    trained without them (``offset_weight: 0``), or a file that does not say (a plain state
    dict, a checkpoint without ``hyper_parameters.offset_weight``)."""
    weight = (saved.get("hyper_parameters") or {}).get("offset_weight")
    if weight is None:
        raise DataError(
            f"{path}: does not say whether the detector was trained with centre offsets (no "
            "hyper_parameters.offset_weight), and centre_votes reads them: give the "
            "CentreDetectorModule checkpoint, or set centre_votes: false"
        )
    if weight <= 0:
        raise DataError(
            f"{path}: the detector was trained without centre offsets (offset_weight: "
            f"{weight}), and centre_votes reads them: set centre_votes: false, or fit the "
            "detector with offset_weight > 0"
        )


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


class CentreGuidedSplit(DistanceSplit):
    """Distance split whose landscape reads a frozen nucleus-centre detector.

    The landscape is the smoothed distance transform times ``centre_offset`` + the
    detector's heatmap (:func:`~protoseg.modules.pseudo_masks.binary_to_instances`), so its
    peaks move to where the detector sees centres. With ``centre_votes`` the heatmap is
    mixed with the votes the foreground's pixels cast along the detector's offsets
    (:func:`~protoseg.modules.centre_votes.vote_heatmap`), and with several
    ``foreground_threshold`` values the per-piece choice also weighs each object by the
    share of its pixels that vote inside it
    (:func:`~protoseg.modules.postprocess.most_convex_candidates`).

    Args:
        detector: the detector's Lightning checkpoint (or a plain state dict of
            ``centre_net``). Its network is built from its ``hyper_parameters.net`` unless
            ``centre_net`` is given, and its weights load when a fit starts (a head's
            checkpoint holds them afterwards). The fit is refused, naming the file, when the
            weights do not fit, when ``centre_votes`` reads a detector trained without
            offsets (``offset_weight: 0``), one whose file does not say, or one whose network
            gives no offsets (also before a validation or prediction, where the file is
            there: :meth:`check`), or when the detector's datamodule normalised its
            images or sized its pixels otherwise than the head's (``mean``, ``std``,
            ``mpp``).
        centre_net: the detector's network, a heatmap logit first (then the row and col
            offsets with ``centre_votes``); by default the one ``detector`` names.
        centre_offset: the landscape's weight where the detector sees no centre.
        centre_sigma: Gaussian smoothing of the heatmap in the landscape, px.
        centre_votes: mix the heatmap with the centre votes of the foreground.
        vote_weight: the votes' share in that mix (the heatmap has the rest).
        vote_sigma: Gaussian smoothing of the vote counts, px.
        vote_saturation: smoothed votes that read as a sure centre (capped at 1 there).
        vote_share_power: exponent of the share of an object's pixels voting inside it, by
            which the choice among thresholds multiplies its solidity.
        min_distance, distance_sigma, foreground_threshold, min_area, min_peak_probability,
            outline_opening: see :class:`~protoseg.postprocess.distance.DistanceSplit`.
    """

    def __init__(
        self,
        detector: str | None = None,
        centre_net: nn.Module | None = None,
        centre_offset: float = 0.25,
        centre_sigma: float = 1.0,
        centre_votes: bool = False,
        vote_weight: float = 0.5,
        vote_sigma: float = 2.0,
        vote_saturation: float = 2.0,
        vote_share_power: float = 0.5,
        min_distance: int = 5,
        distance_sigma: float = 1.0,
        foreground_threshold: float | list[float] = 0.5,
        min_area: int = 10,
        min_peak_probability: float | None = None,
        outline_opening: int = 0,
    ) -> None:
        super().__init__(
            min_distance,
            distance_sigma,
            foreground_threshold,
            min_area,
            min_peak_probability,
            outline_opening,
        )
        if centre_offset <= 0:
            raise ValueError(f"centre_offset must be > 0, got {centre_offset}")
        if not 0.0 <= vote_weight <= 1.0:
            raise ValueError(f"vote_weight must be in [0, 1], got {vote_weight}")
        if min(centre_sigma, vote_sigma, vote_saturation) <= 0:
            raise ValueError(
                "centre_sigma, vote_sigma and vote_saturation must be > 0, got "
                f"{centre_sigma}, {vote_sigma}, {vote_saturation}"
            )
        self.network_config: dict[str, Any] | None = None
        """The network config read from ``detector`` (None when ``centre_net`` was given)."""
        if centre_net is None:
            if detector is None:
                raise ValueError(
                    "CentreGuidedSplit needs detector: the centre detector's checkpoint"
                )
            centre_net, self.network_config = detector_network(detector, read_detector(detector))
        self.detector = detector
        self.centre_net = centre_net.requires_grad_(False)
        self.centre_offset = centre_offset
        self.centre_sigma = centre_sigma
        self.centre_votes = centre_votes
        self.vote_weight = vote_weight
        self.vote_sigma = vote_sigma
        self.vote_saturation = vote_saturation
        self.vote_share_power = vote_share_power

    def complete_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The strategy's ``class_path`` config with the detector's network config filled
        in, so that a head's checkpoint rebuilds it without the detector's file."""
        if self.network_config is None:
            return config
        init_args = {**config.get("init_args", {}), "centre_net": self.network_config}
        return {**config, "init_args": init_args}

    def prepare_fit(self, data: Mapping[str, Any]) -> None:
        """Loads the detector's weights from ``detector``, after :meth:`check_detector`."""
        if self.detector is None:
            raise ValueError("CentreGuidedSplit needs detector to fit: the detector's checkpoint")
        saved = read_detector(self.detector)
        self.check_detector(saved, data)
        state = saved["state_dict"]
        state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
        try:
            self.centre_net.load_state_dict(state)
        except RuntimeError as error:
            raise DataError(
                f"{self.detector}: weights do not fit centre_net: {_one_line(error)}"
            ) from error
        self.check_outputs()

    def check(self, data: Mapping[str, Any]) -> None:
        """Before a validation or prediction (the weights come from a head's checkpoint):
        :meth:`check_detector` where ``detector`` is there to read, and
        :meth:`check_outputs`, so that votes turned on since the fit are refused too."""
        if self.detector is not None and Path(self.detector).is_file():
            self.check_detector(read_detector(self.detector), data)
        self.check_outputs()

    def check_detector(self, saved: Mapping[str, Any], data: Mapping[str, Any]) -> None:
        """Refuses, naming the file, a detector (``saved``) that does not fit this strategy
        (votes without trained offsets, :func:`refuse_votes_without_offsets`) or the head's
        datamodule (``data``: its hyperparameters, :data:`SHARED_DATA_SETTINGS`)."""
        if self.centre_votes:
            refuse_votes_without_offsets(self.detector, saved)
        trained_on = saved.get("datamodule_hyper_parameters") or {}
        for key in SHARED_DATA_SETTINGS:
            if key in trained_on and key in data and not _same(trained_on[key], data[key]):
                raise DataError(
                    f"{self.detector}: the detector's datamodule had {key} {trained_on[key]}, "
                    f"the head's has {data[key]}: give both stages the same data.init_args.{key}"
                )

    def check_outputs(self) -> None:
        """Refuses ``centre_votes`` with a network that gives no offsets (3 outputs)."""
        if not self.centre_votes:
            return
        device = next(self.centre_net.parameters(), torch.zeros(0)).device
        outputs = self.guide(torch.zeros(1, 3, 64, 64, device=device), 64, 0).shape[1]
        if outputs != 3:
            raise DataError(
                f"{self.detector}: the detector's network gives {outputs} output(s), and "
                "centre_votes reads 3 (heatmap, row and col offsets): set centre_votes: "
                "false, or fit the detector with offset_weight > 0"
            )

    def guide(self, images: torch.Tensor, tile_size: int, tile_overlap: int) -> np.ndarray:
        """The detector's outputs (B, C, H, W): heatmap in [0, 1], then any offsets
        (:func:`~protoseg.modules.centres.centre_maps`)."""
        # The frozen detector always runs on its BatchNorm running statistics, whatever the
        # head's mode. It keeps the head's mode otherwise: it runs only in validation and
        # prediction, and a submodule in eval mode at the start of a fit makes Lightning warn.
        mode = self.centre_net.training
        self.centre_net.eval()
        try:
            return centre_maps(self.centre_net, images, tile_size, tile_overlap)
        finally:
            self.centre_net.train(mode)

    def landscape(self, binary: np.ndarray, guide: np.ndarray) -> np.ndarray:
        """The centre map the split reads: the heatmap, or with ``centre_votes`` its mix with
        the votes of the foreground ``binary``."""
        if not self.centre_votes:
            return guide[0]
        if guide.shape[0] != 3:
            raise ValueError(
                f"centre_votes needs a centre_net with 3 outputs (heatmap, row and col "
                f"offsets), got {guide.shape[0]}"
            )
        votes = vote_heatmap(
            binary, guide[1:], sigma=self.vote_sigma, saturation=self.vote_saturation
        )
        return (1.0 - self.vote_weight) * guide[0] + self.vote_weight * votes

    def objects(self, probs: np.ndarray, guide: np.ndarray | None, threshold: float) -> np.ndarray:
        binary = self.foreground(probs, threshold)
        centres = None if guide is None else self.landscape(binary, guide)
        return binary_to_instances(
            binary,
            self.min_distance,
            centres,
            self.centre_offset,
            self.distance_sigma,
            self.centre_sigma,
        )

    def choose(self, candidates: list[np.ndarray], guide: np.ndarray | None) -> np.ndarray:
        """The most convex split per piece; with ``centre_votes`` each object's solidity
        weighed by the share of its pixels voting inside it."""
        if not self.centre_votes or guide is None:
            return most_convex_candidates(candidates)
        return most_convex_candidates(candidates, guide[1:], self.vote_share_power)


def _same(a: Any, b: Any) -> bool:
    """Equal settings, lists and tuples alike (a checkpoint's YAML gives lists)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b
