"""``make bench-wsss4luad-prototypes``: the tissue prototype chain on WSSS4LUAD, and its
references, scored on the validation masks.

1. ``protoseg chain configs/chains/wsss4luad_prototypes.yaml`` (one child process; the chain
   records each step's wall time and peak memory): SimCLR on the 41 training patches ->
   patch embeddings + k-means -> names from the simulated pathologist (the masks of the six
   *tuning* images, :func:`tuning_split`) -> prototype dictionary -> pseudo masks of the
   training patches -> semantic head -> the head's maps of the validation images.
2. Supervised reference: the same head trained on the validation masks, k-fold
   cross-validation, every image predicted by the fold that did not train on it.
3. The dictionary's maps of the validation images (to score the pseudo masks on all 31).
4. Network-free colour baseline: the same prototype stage on optical density instead of SSL
   features (its own k-means and simulated names), no head.

``held_out`` figures score the 25 validation images that neither the naming nor any choice of
settings saw; ``all`` figures score the 31 (tuning images included). Finished steps are kept
in ledgers and ``--resume`` finishes a run cut short.

    python benchmarks/wsss4luad_prototypes.py --data-root ../shared/data/wsss4luad \
        --run-dir runs/bench_wsss4luad_prototypes \
        --output benchmarks/results/wsss4luad_prototypes.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protoseg.chain import ChainLedger  # noqa: E402
from protoseg.datamodules.wsss import fold_stems  # noqa: E402
from protoseg.io.class_maps import TissueClasses  # noqa: E402
from protoseg.io.images import read_code_png  # noqa: E402
from protoseg.io.prototype_files import IGNORE  # noqa: E402
from protoseg.provenance import write_result  # noqa: E402
from protoseg.summary import summary_row  # noqa: E402
from protoseg.tissue_scoring import score_class_maps  # noqa: E402

CHAIN = "configs/chains/wsss4luad_prototypes.yaml"
PROTOTYPE_CONFIG = "configs/prototypes/wsss4luad.yaml"
HEAD_CONFIG = "configs/wsss4luad/segment.yaml"
CLASSES = TissueClasses(("tumor", "stroma", "normal"), background_code=3)
COLOUR_EMBEDDER = "protoseg.modules.prototypes.ColourEmbedder"
# The chain's head-fit arguments beyond its config (configs/chains/wsss4luad_prototypes.yaml),
# given to the supervised reference too, so that the two heads differ only in their masks.
HEAD_ARGS = ["--data.balance_classes=true"]
NAMING = (
    "protoseg name-clusters: every 8 px patch of the 6 tuning images goes to its nearest "
    "centroid; a cluster is named with the class of >= 80% of its 10 patches nearest the "
    "centroid (a patch's class: background if it covers > 50% of the 32 px patch (the "
    "embedder's window), else its main tissue), else ignore (no --labelled)"
)


def tuning_split(mask_dir: Path, seed: int = 0) -> list[str]:
    """The six validation images the simulated pathologist (and the choice of settings) may
    use: one of those with normal tissue, one with stroma alone, four with tumour and stroma,
    drawn by ``np.random.default_rng(seed)``. Groups by the README's image-level rule: a class
    is present when it covers at least 2% of the image."""
    groups: dict[str, list[str]] = {"normal": [], "stroma": [], "mixed": [], "other": []}
    for path in sorted(mask_dir.glob("*.png")):
        codes = read_code_png(path)
        present = [(codes == c).mean() >= 0.02 for c in range(3)]
        if present[2]:
            groups["normal"].append(path.stem)
        elif present == [False, True, False]:
            groups["stroma"].append(path.stem)
        elif present == [True, True, False]:
            groups["mixed"].append(path.stem)
        else:
            groups["other"].append(path.stem)
    rng = np.random.default_rng(seed)
    chosen = [groups["normal"][rng.integers(len(groups["normal"]))]]
    chosen.append(groups["stroma"][rng.integers(len(groups["stroma"]))])
    chosen += rng.choice(groups["mixed"], size=4, replace=False).tolist()
    return sorted(chosen)


def run_protoseg(name: str, argv: list[str], log_dir: Path) -> dict[str, Any]:
    """Runs ``python -m protoseg ARGV`` as a child process; its wall seconds and the peak
    resident memory (MiB) of its largest process. Raises with the log's tail on failure."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    command = [sys.executable, "-m", "protoseg", *argv]
    print(f"benchmark: {name}: protoseg {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    with log.open("w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = round(time.perf_counter() - start, 1)
    if process.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{name} failed ({process.returncode}); {log}:\n{tail}")
    print(f"benchmark: {name} in {seconds} s", flush=True)
    return {"seconds": seconds, "peak_rss_mib": round(usage.ru_maxrss / 1024)}


def fit_args(config: str, run_dir: Path, accelerator: str | None) -> list[str]:
    """A stage config's fit into ``run_dir``: no validation during training (nothing is chosen
    on it), only a last checkpoint."""
    return [
        "fit",
        f"--config={config}",
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger.init_args.save_dir={run_dir}",
        f"--trainer.callbacks.init_args.dirpath={run_dir / 'checkpoints'}",
        "--trainer.check_val_every_n_epoch=100000",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        *([] if accelerator is None else [f"--trainer.accelerator={accelerator}"]),
    ]


def scores(predictions: Path, val_root: Path, tuning: list[str]) -> dict[str, Any]:
    """Whole-set figures of a folder of validation maps: the held-out images and all."""
    stems = sorted(p.stem for p in (val_root / "img").glob("*.png"))
    held_out = [s for s in stems if s not in tuning]
    return {
        "held_out": score_class_maps(predictions, val_root, CLASSES, held_out),
        "all": score_class_maps(predictions, val_root, CLASSES, stems),
    }


def prototype_steps(
    ledger: ChainLedger, run: Path, data: Path, tuning: list[str], embedder: list[str]
) -> tuple[list[str], Path, dict[str, Any]]:
    """The colour baseline's clusters, names (simulated pathologist) and dictionary; returns
    its predict arguments, the dictionary and the names' record."""
    folder, logs = run / "colour_prototypes", run / "logs"
    base = ["predict", f"--config={PROTOTYPE_CONFIG}", *embedder, f"--data.root={data}"]
    base += ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    argv = [*base, f"--output_dir={folder}"]
    ledger.run("colour clusters", lambda: run_protoseg("colour_clusters", argv, logs), [folder])
    names, clusters = folder / "names.json", folder / "clusters.npz"
    argv = ["name-clusters", f"--clusters={clusters}", f"--root={data / 'validation'}"]
    argv += ["--images", *tuning, f"--output={names}"]
    ledger.run("colour naming", lambda: run_protoseg("colour_naming", argv, logs))
    dictionary = folder / "dictionary.npz"
    argv = ["dictionary", f"--clusters={clusters}", f"--names={names}", f"--output={dictionary}"]
    ledger.run("colour dictionary", lambda: run_protoseg("colour_dictionary", argv, logs))
    return base, dictionary, naming_record(names)


def naming_record(names: Path) -> dict[str, Any]:
    """K, how many clusters were named, and with what."""
    given = json.loads(names.read_text())["names"]
    named = {k: v for k, v in given.items() if v != IGNORE}
    counts = {n: sum(v == n for v in named.values()) for n in CLASSES.output_names}
    return {"clusters": len(given), "named": len(named), "named_as": counts}


def query(
    ledger: ChainLedger, name: str, base: list[str], dictionary: Path, images: Path, out: Path
) -> None:
    """The dictionary's class maps of ``images`` into ``out``."""
    argv = [*base, f"--model.init_args.dictionary={dictionary}", f"--data.predict_dir={images}"]
    argv.append(f"--output_dir={out}")
    key = name.replace(" ", "_")
    ledger.run(name, lambda: run_protoseg(key, argv, out.parent / "logs"), [out])


def run_chain(
    run: Path,
    data: Path,
    head_steps: int | None,
    accelerator: str | None,
    resume: bool,
    extra: list[str],
) -> dict[str, Any]:
    """``protoseg chain`` of the prototype chain into ``run/chain`` (a child process); its
    result JSON, with its wall time and peak memory."""
    argv = ["chain", CHAIN, "--run_dir", str(run / "chain"), f"--data.root={data}"]
    argv += ["--trainer.enable_progress_bar=false"]
    argv += [f"--step-arg=ssl fit=--data.root={data / 'training'}"]
    argv += [f"--step-arg=naming=--root={data / 'validation'}"]
    if head_steps is not None:
        argv.append(f"--step-arg=head fit=--trainer.max_steps={head_steps}")
    if accelerator is not None:
        argv.append(f"--trainer.accelerator={accelerator}")
    if resume:
        argv.append("--resume")
    record = run_protoseg("chain", [*argv, *extra], run / "logs")
    return {**record, "result": json.loads((run / "chain" / "result.json").read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/data/wsss4luad")
    parser.add_argument("--run-dir", default="runs/bench_wsss4luad_prototypes")
    parser.add_argument("--output", default="benchmarks/results/wsss4luad_prototypes.json")
    parser.add_argument("--folds", type=int, default=3, help="folds of the supervised reference")
    # 150 steps: what the shared 2-core machine finishes (with the 3 reference folds) in a
    # session; configs/wsss4luad/segment.yaml's 600 is for a machine with a GPU.
    parser.add_argument(
        "--head-steps", type=int, default=150, help="the heads' steps (0: the config's)"
    )
    parser.add_argument(
        "--reference-steps",
        type=int,
        default=None,
        help="the supervised reference heads' steps (default: --head-steps)",
    )
    parser.add_argument("--accelerator", default=None, help="trainer.accelerator of the fits")
    parser.add_argument("--resume", action="store_true", help="keep the finished steps")
    parser.add_argument(
        "--chain-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument for protoseg chain, e.g. --chain-arg=--trainer.max_steps=2",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument for the supervised reference's fits",
    )
    parser.add_argument(
        "--colour-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument for the colour baseline's prototype stage",
    )
    args = parser.parse_args()
    data = Path(args.data_root).resolve()
    run = Path(args.run_dir).resolve()
    refs = run / "references"
    head_steps = args.head_steps or None
    reference_steps = args.reference_steps or head_steps
    settings = {
        "data_root": str(data),
        "folds": args.folds,
        "reference_steps": reference_steps,
        "head_args": HEAD_ARGS,
        "accelerator": args.accelerator,
        "overrides": args.override,
        "colour_args": args.colour_arg,
        "naming": NAMING,
    }
    val_root = data / "validation"
    tuning = tuning_split(val_root / "mask")
    print(f"benchmark: tuning images (the simulated pathologist's masks): {' '.join(tuning)}")

    # 1. The chain: SSL -> prototypes -> naming -> pseudo masks -> head -> predictions; its
    # own ledger in run/chain (with --resume it keeps its finished steps).
    chain = run_chain(run, data, head_steps, args.accelerator, args.resume, args.chain_arg)
    # The references' steps: their own ledger, so that starting them afresh keeps the chain.
    ledger = ChainLedger(refs, settings, args.resume)
    logs = refs / "logs"
    chain_dir = run / "chain"
    encoder = chain_dir / "ssl" / "encoder.ckpt"
    dictionary = chain_dir / "naming" / "dictionary.npz"

    # 2. Supervised reference: the same head on the validation masks, k-fold (first: it does
    # not depend on the naming, so a resumed run that renames keeps it).
    supervised_val = refs / "supervised_val"
    steps = [] if reference_steps is None else [f"--trainer.max_steps={reference_steps}"]
    for fold in range(args.folds):
        fold_dir = refs / "supervised" / f"fold{fold}"
        argv = [*fit_args(HEAD_CONFIG, fold_dir, args.accelerator), f"--data.root={data}"]
        argv += ["--data.pseudo_mask_dir=null", "--data.train_split=val"]
        argv += [f"--data.val_folds={args.folds}", f"--data.val_fold={fold}", *steps]
        argv += [*HEAD_ARGS, *args.override]
        argv.append(f"--model.init_args.net.init_args.encoder_weights={encoder}")
        ledger.run(
            f"supervised fold{fold}",
            lambda a=argv, f=fold: run_protoseg(f"supervised_fold{f}", a, logs),
            [fold_dir],
        )
        ledger.run(
            f"supervised predict{fold}",
            lambda f=fold, d=fold_dir: predict_fold(f, args.folds, d, data, supervised_val, logs),
        )

    # 3. The dictionary's maps of all 31 validation images.
    embedder = [f"--model.init_args.embedder.init_args.weights={encoder}"]
    base = ["predict", f"--config={PROTOTYPE_CONFIG}", *embedder, f"--data.root={data}"]
    base += ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    pseudo_val = refs / "pseudo_masks_val"
    query(ledger, "pseudo masks val", base, dictionary, val_root, pseudo_val)

    # 4. Network-free colour baseline: the prototype stage on optical density, no head.
    colour = [f"--model.init_args.embedder={COLOUR_EMBEDDER}"]
    colour_base, colour_dictionary, colour_naming = prototype_steps(
        ledger, refs, data, tuning, [*colour, *args.colour_arg]
    )
    colour_val = refs / "colour_val"
    query(ledger, "colour val", colour_base, colour_dictionary, val_root, colour_val)

    chain_result = chain["result"]
    chain_steps = chain_result["steps"]
    stages = {
        name: {k: record.get(k) for k in ("command", "seconds", "peak_rss_mib")}
        for name, record in {**chain_steps, **ledger.steps}.items()
    }
    checkpoint = chain_dir / "segment" / "checkpoints" / "last.ckpt"
    pseudo_scores = scores(pseudo_val, val_root, tuning)
    head_scores = scores(chain_dir / "predictions", val_root, tuning)
    # --folds 0: no supervised reference (its figures are left out).
    supervised_scores = scores(supervised_val, val_root, tuning) if args.folds else None
    colour_scores = scores(colour_val, val_root, tuning)
    head_seconds = chain_result["chain_wall_seconds"]
    figures = {
        "dataset": "WSSS4LUAD (../shared/data/wsss4luad): 41 training patches with image-level "
        "labels, 31 validation images with masks",
        "chain": CHAIN,
        "tuning_images": tuning,
        "held_out_images": 31 - len(tuning),
        "simulated_pathologist": NAMING,
        "clusters": naming_record(chain_dir / "naming" / "names.json"),
        "pseudo_masks": pseudo_scores,
        "head": head_scores,
        "head_steps": chain_steps["head fit"].get("steps"),
        "supervised_cv": supervised_scores
        and {"folds": args.folds, "steps": reference_steps, **supervised_scores},
        "colour_baseline": {"clusters": colour_naming, **colour_scores},
        "stages": stages,
        "chain_wall_seconds": head_seconds,
        "checkpoint": str(checkpoint),
        "predict_config": str((ROOT / HEAD_CONFIG).resolve()),
        "predict_command": f"protoseg predict --config {(ROOT / HEAD_CONFIG).resolve()} "
        f"--ckpt_path {checkpoint} --data.root DIR --output_dir OUT  (DIR/img/*.png)",
        # Steps whose records (and outputs) come from an earlier run with the same arguments.
        "kept_steps": [*chain_result.get("steps_from_earlier_runs", []), *ledger.kept],
        "summary": summary_rows(
            pseudo_scores, head_scores, supervised_scores, colour_scores, chain_steps
        ),
    }
    path = write_result(args.output, figures)
    print(
        f"benchmark: held-out mIoU: pseudo masks {pseudo_scores['held_out']['miou']}, head "
        f"{head_scores['held_out']['miou']}, supervised "
        f"{supervised_scores and supervised_scores['held_out']['miou']}, colour "
        f"{colour_scores['held_out']['miou']} -> {path}"
    )


SUMMARY_METRICS = ("miou", "fwiou", "iou_tumor", "iou_stroma", "iou_normal")


def summary_rows(
    pseudo: dict[str, Any],
    head: dict[str, Any],
    supervised: dict[str, Any] | None,
    colour: dict[str, Any],
    chain_steps: dict[str, Any],
) -> list[dict[str, Any]]:
    """The README table's rows: held-out figures (the 25 images nothing chose on)."""

    def upto(name: str) -> float:
        names = list(chain_steps)
        done = names[: names.index(name) + 1]
        return round(
            sum(chain_steps[n]["seconds"] for n in done if chain_steps[n]["command"] != "validate"),
            1,
        )

    def row(name: str, labels: str, figures: dict[str, Any], seconds: float | None) -> dict:
        held = figures["held_out"]
        metrics = {k: held[k] for k in SUMMARY_METRICS}
        return summary_row(
            name, labels, "held-out", metrics, held["images"], "wsss4luad/validation", seconds
        )

    return [
        row(
            "Prototype pseudo masks (SimCLR + k-means, 6 masks name clusters)",
            "image-level",
            pseudo,
            upto("pseudo masks"),
        ),
        row(
            "Prototype chain (pseudo masks -> semantic head)",
            "image-level",
            head,
            upto("predictions"),
        ),
        row("Colour prototypes (optical density, no network)", "image-level", colour, None),
    ] + (
        [row("Supervised head on validation masks (cross-validated)", "full", supervised, None)]
        if supervised is not None
        else []
    )


def predict_fold(
    fold: int, folds: int, fold_dir: Path, data: Path, out: Path, logs: Path
) -> dict[str, Any]:
    """The fold's head predicts the validation images it did not train on (linked into
    ``fold_dir/held_out/img``) into ``out``, where the folds' maps come together."""
    stems = sorted(p.stem for p in (data / "validation" / "img").glob("*.png"))
    # The datamodule's rule (fold_seed 0, its default), so these are the fit's held-out images.
    held = fold_stems(stems, folds, fold, 0)
    images = fold_dir / "held_out" / "img"
    shutil.rmtree(images.parent, ignore_errors=True)
    images.mkdir(parents=True)
    for stem in held:
        (images / f"{stem}.png").symlink_to(data / "validation" / "img" / f"{stem}.png")
    argv = ["predict", f"--config={HEAD_CONFIG}"]
    argv += [
        f"--ckpt_path={fold_dir / 'checkpoints' / 'last.ckpt'}",
        f"--data.root={images.parent}",
    ]
    argv += [f"--output_dir={out}", "--trainer.enable_progress_bar=false"]
    return {**run_protoseg(f"supervised_predict{fold}", argv, logs), "images": held}


if __name__ == "__main__":
    main()
