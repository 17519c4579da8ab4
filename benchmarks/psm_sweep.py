"""The PSM head's post-processing chosen on a tuning split and quoted on images no choice saw.

Input: a head (and the centre detector its checkpoint holds) from the held-out chain
(``make bench-monuseg-psm-holdout``: every stage trained on the seeded 24 of MoNuSeg's 30
training images). The head's class probabilities and the detector's outputs of all 30 images
are saved once (``--cache``, float32, so that every split is the one ``protoseg validate``
makes). Then, on the 24 tuning images only, labels choose:

1. **Coordinate search** from the head's own settings: each axis of :data:`AXES` in turn,
   every value tried with the others held, the best mean AJI kept; passes repeat until one
   changes nothing (at most ``--passes``).
2. **Simplification**: each step that can be switched off (:data:`STEPS`: the detector's
   votes, the detector, the thresholds' per-piece choice, the unsure-object filter, the
   opening) is switched off, the cheapest first, when that costs less than ``--spread`` AJI
   (heads of one recipe differ by ~0.005 from seed to seed): a gain inside the spread does
   not earn its part.

The choice is frozen in the JSON, then the shipped settings and the choice are quoted on the 6
held-out images. Every evaluated setting, its tuning figures and the order of the decisions
are in the JSON, with the rule's verdict (:func:`decide`): the choice replaces the shipped
settings only when it gains at least the spread on the tuning images. The held-out figures
are reported beside the verdict and never consulted by it (not even as a veto).

    python benchmarks/psm_sweep.py \
        --checkpoint runs/bench_psm_holdout/segment/checkpoints/last.ckpt \
        --cache runs/bench_psm_holdout/sweep_inputs \
        --output benchmarks/results/monuseg_psm_sweep.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from protoseg.io.checkpoints import read_checkpoint  # noqa: E402
from protoseg.io.errors import DataError, one_line, reported  # noqa: E402
from protoseg.io.images import write_bytes_atomic  # noqa: E402
from protoseg.metrics import NucleiMetrics  # noqa: E402
from protoseg.metrics.functional import nuclei_scores  # noqa: E402
from protoseg.modules.postprocess import drop_unsure_objects, open_objects  # noqa: E402
from protoseg.postprocess import InstanceSplit  # noqa: E402
from protoseg.postprocess.centre_guided import build_network  # noqa: E402

Settings = dict[str, Any]
"""A strategy's ``{class_path, init_args}`` config."""

DISTANCE = "protoseg.postprocess.distance.DistanceSplit"
GUIDED = "protoseg.postprocess.centre_guided.CentreGuidedSplit"
EIGHT = [0.2, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]

#: Settings that only the centre-guided split takes.
GUIDED_ONLY = (
    "detector",
    "centre_net",
    "centre_offset",
    "centre_sigma",
    "centre_votes",
    "vote_weight",
    "vote_sigma",
    "vote_saturation",
    "vote_share_power",
)
#: Settings that do not change a threshold's objects (the split's cache key leaves them out).
AFTER_OBJECTS = ("foreground_threshold", "min_peak_probability", "outline_opening")


def with_args(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with ``init_args`` changed."""
    changed = copy.deepcopy(settings)
    changed["init_args"].update(changes)
    return changed


def as_distance(settings: Settings) -> Settings:
    """The same settings without the detector (a plain distance split)."""
    args = {k: v for k, v in settings["init_args"].items() if k not in GUIDED_ONLY}
    return {"class_path": DISTANCE, "init_args": args}


def guided(settings: Settings, base: Settings, votes: bool) -> Settings:
    """The centre-guided split (the detector of ``base``), votes on or off."""
    args = {**base["init_args"], **settings["init_args"], "centre_votes": votes}
    return {"class_path": GUIDED, "init_args": args}


def is_guided(settings: Settings) -> bool:
    return settings["class_path"] == GUIDED


Axis = tuple[str, Callable[[Settings, Settings], list[tuple[str, Settings]]]]


def _strategy(s: Settings, base: Settings) -> list[tuple[str, Settings]]:
    return [
        ("distance", as_distance(s)),
        ("detector", guided(s, base, False)),
        ("detector + votes", guided(s, base, True)),
    ]


def _values(name: str, values: list[Any], guided_only: bool = False) -> Axis:
    def options(s: Settings, base: Settings) -> list[tuple[str, Settings]]:
        if guided_only and not is_guided(s):
            return []
        return [(json.dumps(v), with_args(s, **{name: v})) for v in values]

    return name, options


#: The axes of the coordinate search, in order.
AXES: list[Axis] = [
    ("strategy", _strategy),
    _values("min_distance", [5, 7, 9]),
    _values("centre_offset", [0.1, 0.25, 0.5], guided_only=True),
    _values("foreground_threshold", [[0.5], [0.6], [0.7], [0.35, 0.5, 0.7, 0.9], EIGHT]),
    _values("min_peak_probability", [None, 0.9, 0.99]),
    _values("outline_opening", [0, 2, 3, 4]),
]


def _one_threshold(s: Settings, best_single: Callable[[Settings], Settings]) -> Settings | None:
    thresholds = s["init_args"].get("foreground_threshold")
    if isinstance(thresholds, list) and len(thresholds) > 1:
        return best_single(s)
    return None


#: Steps the simplification may switch off: name -> (settings -> settings without it, or None).
STEPS: dict[str, Callable[[Settings], Settings | None]] = {
    "centre votes": lambda s: (
        with_args(s, centre_votes=False)
        if is_guided(s) and s["init_args"].get("centre_votes")
        else None
    ),
    "centre detector": lambda s: as_distance(s) if is_guided(s) else None,
    "unsure-object filter": lambda s: (
        with_args(s, min_peak_probability=None)
        if s["init_args"].get("min_peak_probability") is not None
        else None
    ),
    "outline opening": lambda s: (
        with_args(s, outline_opening=0) if s["init_args"].get("outline_opening", 0) > 0 else None
    ),
}


class Inputs:
    """The saved split inputs of one image: probabilities (3, H, W), the detector's outputs
    (C, H, W) and the true instances (H, W)."""

    def __init__(self, path: Path) -> None:
        try:
            with np.load(path) as saved:
                self.probs = saved["probs"]
                self.guide = saved["guide"]
                self.target = saved["target"]
        except FileNotFoundError:
            raise DataError(f"{path}: no such split-input file") from None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise DataError(
                f"{path}: not a split-input file of benchmarks/psm_sweep.py ({one_line(error)}); "
                "delete it and run again to save it anew"
            ) from None
        if self.probs.ndim != 3 or self.target.shape != self.probs.shape[1:]:
            raise DataError(
                f"{path}: probabilities {self.probs.shape} and instances {self.target.shape} "
                "do not fit; delete it and run again to save it anew"
            )
        self.stem = path.stem


def save_inputs(
    checkpoint: str, data_root: str, folder: Path, stems: Collection[str] | None = None
) -> None:
    """Every image's split inputs (``stems``' only, if given) from the head of ``checkpoint``
    (its datamodule's root replaced by ``data_root``), as float32 ``<stem>.npz``; images
    already saved are skipped."""
    import io

    from protoseg.datamodules.monuseg import MoNuSegDataModule
    from protoseg.lightning_modules.segmentation import SegmentationModule

    if stems is not None and all((folder / f"{stem}.npz").is_file() for stem in stems):
        return  # nothing to save: the head need not be loaded
    model = SegmentationModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    data = MoNuSegDataModule.load_from_checkpoint(checkpoint, root=data_root, val_fraction=0.0)
    data.setup("validate")
    folder.mkdir(parents=True, exist_ok=True)
    for batch in tqdm(data.val_dataloader(), desc="split inputs", unit="image"):
        path = folder / f"{batch['stem'][0]}.npz"
        if path.is_file() or (stems is not None and batch["stem"][0] not in stems):
            continue
        with torch.no_grad():
            ((probs, guide),) = model.split_inputs(batch["image"])
        buffer = io.BytesIO()
        target = batch["instances"][0].numpy().astype(np.int32)
        np.savez(buffer, probs=probs, guide=guide, target=target)
        write_bytes_atomic(path, buffer.getvalue())


class Evaluator:
    """Mean scores of settings over a set of images, each threshold's objects kept per
    image while the settings that make them stay the same."""

    def __init__(self, images: list[Inputs], keep: int = 3, threads: int = 2) -> None:
        self.images = images
        self.keep = keep
        self.threads = threads
        # The objects of the ``keep`` settings used last (a coordinate search comes back to
        # its current settings after each candidate), uint16 where the ids fit.
        self._objects: OrderedDict[str, dict[tuple[int, float], np.ndarray]] = OrderedDict()
        self.seen: dict[str, dict[str, float]] = {}

    def split(self, settings: Settings) -> InstanceSplit:
        return build_network(settings).detached()

    def _objects_of(self, split: InstanceSplit, settings: Settings, index: int, t: float):
        key = json.dumps(
            [settings["class_path"]]
            + [
                (k, v)
                for k, v in sorted(settings["init_args"].items())
                if k not in AFTER_OBJECTS and k not in ("detector", "centre_net")
            ]
        )
        if key not in self._objects:
            self._objects[key] = {}
            while len(self._objects) > self.keep:
                self._objects.popitem(last=False)
        self._objects.move_to_end(key)
        kept = self._objects[key]
        if (index, t) not in kept:
            image = self.images[index]
            objects = split.objects(image.probs, image.guide, t)
            if objects.max(initial=0) <= np.iinfo(np.uint16).max:
                objects = objects.astype(np.uint16)
            kept[(index, t)] = objects
        return kept[(index, t)].astype(np.int32)

    def instances(
        self, settings: Settings, index: int, split: InstanceSplit | None = None
    ) -> np.ndarray:
        """What ``build_network(settings)(probs, guide)`` gives for image ``index``, from the
        kept objects (:func:`check_same` proves it); ``split``: that network, built once."""
        split = self.split(settings) if split is None else split
        image = self.images[index]
        candidates = []
        for t in split.thresholds:
            objects = self._objects_of(split, settings, index, t)
            if split.min_peak_probability is not None:
                foreground = 1.0 - image.probs[0]
                objects = drop_unsure_objects(objects, foreground, split.min_peak_probability)
            candidates.append(objects)
        chosen = candidates[0] if len(candidates) == 1 else split.choose(candidates, image.guide)
        return open_objects(chosen, split.outline_opening)

    def __call__(self, settings: Settings) -> dict[str, float]:
        name = json.dumps(settings, sort_keys=True)
        if name not in self.seen:
            metrics = NucleiMetrics(prefix="")

            split = self.split(settings)

            def score(index: int) -> dict[str, float]:
                found = self.instances(settings, index, split)
                return nuclei_scores(found, self.images[index].target)

            # The first image on this thread (it makes the settings' cache entry), the rest
            # in threads: scipy's and skimage's filters release the GIL.
            metrics.update(scores=[score(0)])
            with ThreadPoolExecutor(self.threads) as pool:
                for scores in pool.map(score, range(1, len(self.images))):
                    metrics.update(scores=[scores])
            self.seen[name] = {k: round(float(v), 4) for k, v in metrics.compute().items()}
        return self.seen[name]


def check_same(evaluator: Evaluator, settings: Settings) -> None:
    """The evaluator's composition equals the strategy's own split on the first image."""
    image = evaluator.images[0]
    direct = evaluator.split(settings)(image.probs, image.guide)
    if not np.array_equal(direct, evaluator.instances(settings, 0)):
        raise AssertionError(f"{image.stem}: the sweep's split differs from the strategy's")


def coordinate_search(
    evaluate: Evaluator, start: Settings, base: Settings, passes: int, log: list[dict]
) -> Settings:
    """Each axis in turn, its best value by mean AJI kept (ties: the current one)."""
    current = start
    for round_index in range(passes):
        changed = False
        for axis, options in AXES:
            best, best_aji = current, evaluate(current)["aji"]
            for label, candidate in options(current, base):
                figures = evaluate(candidate)
                log.append({"pass": round_index, "axis": axis, "value": label, **figures})
                if figures["aji"] > best_aji + 1e-9:
                    best, best_aji = candidate, figures["aji"]
            changed |= best != current
            current = best
        if not changed:
            break
    return current


def best_single_threshold(evaluate: Evaluator, settings: Settings) -> Settings:
    """``settings`` with the one threshold of the multi-threshold list scoring best."""
    options = [with_args(settings, foreground_threshold=[t]) for t in (0.5, 0.6, 0.7)]
    return max(options, key=lambda s: evaluate(s)["aji"])


def simplify(evaluate: Evaluator, settings: Settings, spread: float, log: list[dict]) -> Settings:
    """Switches off, cheapest first, every step whose removal costs less than ``spread``."""
    steps = {
        **STEPS,
        "per-piece threshold choice": lambda s: _one_threshold(
            s, lambda x: best_single_threshold(evaluate, x)
        ),
    }
    current = settings
    while True:
        aji = evaluate(current)["aji"]
        costs = []
        for name, without in steps.items():
            simpler = without(current)
            if simpler is not None:
                cost = round(aji - evaluate(simpler)["aji"], 4)
                costs.append((cost, name, simpler))
        if not costs:
            return current
        cost, name, simpler = min(costs, key=lambda c: c[0])
        dropped = cost < spread
        log.append({"step": name, "aji_cost": cost, "dropped": dropped})
        if not dropped:
            return current
        current = simpler


def decide(tuning: dict[str, dict], held_out: dict[str, dict], spread: float) -> dict[str, Any]:
    """Whether the frozen choice replaces the shipped settings.

    It does when its AJI on the tuning images beats the shipped settings' by at least
    ``spread`` (a smaller gain lies within the seed-to-seed spread of heads). The held-out
    gain is reported, never consulted: a figure quoted on images that vetoed a choice would
    no longer be held out.

    Args:
        tuning, held_out: ``{"shipped": scores, "chosen": scores}`` of each image set.
        spread: the seed-to-seed AJI spread.
    """
    tuning_gain = round(tuning["chosen"]["aji"] - tuning["shipped"]["aji"], 4)
    held_out_gain = round(held_out["chosen"]["aji"] - held_out["shipped"]["aji"], 4)
    ship = tuning_gain >= spread
    return {
        "rule": (
            "the choice ships when it gains >= spread AJI on the tuning images; the held-out "
            "gain is reported, not consulted"
        ),
        "tuning_aji_gain": tuning_gain,
        "held_out_aji_gain": held_out_gain,
        "ships": "chosen" if ship else "shipped",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the held-out chain's head")
    parser.add_argument("--data-root", default="../shared/data/monuseg/train")
    parser.add_argument("--cache", type=Path, required=True, help="folder of split inputs")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--spread", type=float, default=0.005, help="seed-to-seed AJI spread")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/monuseg_psm_sweep.json")
    args = parser.parse_args()

    from protoseg.datamodules.monuseg import find_records, split_stems

    start = time.perf_counter()
    save_inputs(args.checkpoint, args.data_root, args.cache)
    inputs_seconds = time.perf_counter() - start
    stems = [r.stem for r in find_records(args.data_root) if r.label_path is not None]
    tuning_stems, held_out_stems = split_stems(stems, args.val_fraction, args.split_seed)
    tuning = Evaluator([Inputs(args.cache / f"{s}.npz") for s in tuning_stems])
    held_out = Evaluator([Inputs(args.cache / f"{s}.npz") for s in held_out_stems])
    shipped = read_checkpoint(args.checkpoint)
    shipped = shipped["hyper_parameters"]["postprocess"]

    start = time.perf_counter()
    search_log: list[dict] = []
    searched = coordinate_search(tuning, shipped, shipped, args.passes, search_log)
    simplify_log: list[dict] = []
    chosen = simplify(tuning, searched, args.spread, simplify_log)
    check_same(tuning, chosen)
    sweep_seconds = time.perf_counter() - start

    def brief(settings: Settings) -> Settings:
        args_ = {k: v for k, v in settings["init_args"].items() if k != "centre_net"}
        return {"class_path": settings["class_path"], "init_args": args_}

    tuning_figures = {"shipped": tuning(shipped), "chosen": tuning(chosen)}
    held_out_figures = {"shipped": held_out(shipped), "chosen": held_out(chosen)}
    figures = {
        "benchmark": "monuseg_psm_sweep",
        "checkpoint": args.checkpoint,
        "tuning_images": tuning_stems,
        "held_out_images": held_out_stems,
        "labels_used": "tuning images choose; held-out images only score the frozen choice",
        "spread": args.spread,
        "shipped": brief(shipped),
        "searched": brief(searched),
        "chosen": brief(chosen),
        "tuning": {
            "shipped": tuning(shipped),
            "searched": tuning(searched),
            "chosen": tuning(chosen),
        },
        "held_out": held_out_figures,
        "decision": decide(tuning_figures, held_out_figures, args.spread),
        "search": search_log,
        "simplification": simplify_log,
        "evaluated_settings": len(tuning.seen),
        "inputs_wall_seconds": round(inputs_seconds, 1),
        "sweep_wall_seconds": round(sweep_seconds, 1),
    }
    path = write_result(args.output, figures)
    print(f"wrote {path}")
    print(f"chosen: {json.dumps(figures['chosen'])}")
    print(f"tuning {figures['tuning']}")
    print(f"held out {figures['held_out']}")
    print(f"decision {figures['decision']}")


if __name__ == "__main__":
    with reported():  # bad input: one line naming the file, status 2
        main()
