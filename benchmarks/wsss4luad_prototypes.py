"""``make bench-wsss4luad-prototypes``: the tissue prototype chain on WSSS4LUAD, and its
references, scored on the validation masks.

Chain (each step one ``protoseg`` command, timed, its peak memory read from the kernel):
SimCLR on the 41 training patches -> patch embeddings + k-means (K from the config) -> names
from the simulated pathologist -> prototype dictionary -> pseudo masks of the training patches
(and, to score them, of the validation images) -> semantic head trained on the pseudo masks ->
the head's maps of the validation images. References: the same head trained on the
validation masks (k-fold cross-validation, every image predicted by the fold that did not
train on it) and a network-free colour baseline (the same prototype stage on optical density
instead of SSL features, no head).

The simulated pathologist (``protoseg name-clusters``) sees the masks of six validation images,
the *tuning* images (:func:`tuning_split`, drawn by a fixed seed before any figure was seen);
every choice of the chain's settings was made on them too. ``held_out`` figures score the 25
others, which nothing saw; ``all`` figures score the 31 (tuning images included, for
comparison with full-set numbers). The chain is resumable (``--resume``): finished steps are
kept (:class:`~benchmarks.chain.ChainLedger`).

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

from benchmarks.chain import ChainLedger  # noqa: E402
from benchmarks.common import write_result  # noqa: E402
from protoseg.datamodules.wsss import fold_stems  # noqa: E402
from protoseg.io.class_maps import TissueClasses  # noqa: E402
from protoseg.io.images import read_code_png  # noqa: E402
from protoseg.io.prototype_files import IGNORE  # noqa: E402
from protoseg.tissue_scoring import score_class_maps  # noqa: E402

SSL_CONFIG = "configs/ssl/simclr_wsss4luad.yaml"
PROTOTYPE_CONFIG = "configs/prototypes/wsss4luad.yaml"
HEAD_CONFIG = "configs/wsss4luad/segment.yaml"
CLASSES = TissueClasses(("tumor", "stroma", "normal"), background_code=3)
COLOUR_EMBEDDER = "protoseg.modules.prototypes.ColourEmbedder"


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
    ledger: ChainLedger,
    run: Path,
    data: Path,
    tuning: list[str],
    embedder: list[str],
    prefix: str,
    extra: list[str],
) -> tuple[Path, dict[str, Any]]:
    """Clusters, names (simulated pathologist), dictionary; returns the dictionary and the
    names' record."""
    folder = run / f"{prefix}prototypes"
    logs = run / "logs"
    base = ["predict", f"--config={PROTOTYPE_CONFIG}", *embedder, f"--data.root={data}", *extra]
    base.append("--trainer.enable_progress_bar=false")
    ledger.run(
        f"{prefix}cluster",
        lambda: run_protoseg(f"{prefix}cluster", [*base, f"--output_dir={folder}"], logs),
        [folder],
    )
    names = folder / "names.json"
    clusters = folder / "clusters.npz"
    argv = ["name-clusters", f"--clusters={clusters}", f"--root={data / 'validation'}"]
    argv += ["--images", *tuning, f"--output={names}"]
    ledger.run(f"{prefix}naming", lambda: run_protoseg(f"{prefix}naming", argv, logs))
    dictionary = folder / "dictionary.npz"
    argv = ["dictionary", f"--clusters={clusters}", f"--names={names}", f"--output={dictionary}"]
    ledger.run(f"{prefix}dictionary", lambda: run_protoseg(f"{prefix}dictionary", argv, logs))
    given = json.loads(names.read_text())["names"]
    named = {k: v for k, v in given.items() if v != IGNORE}
    counts = {n: sum(v == n for v in named.values()) for n in CLASSES.output_names}
    return dictionary, {"clusters": len(given), "named": len(named), "named_as": counts}


def query(
    ledger: ChainLedger, name: str, base: list[str], dictionary: Path, images: Path, out: Path
) -> None:
    argv = [*base, f"--model.init_args.dictionary={dictionary}", f"--data.predict_dir={images}"]
    argv.append(f"--output_dir={out}")
    ledger.run(name, lambda: run_protoseg(name, argv, out.parent / "logs"), [out])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/data/wsss4luad")
    parser.add_argument("--run-dir", default="runs/bench_wsss4luad_prototypes")
    parser.add_argument("--output", default="benchmarks/results/wsss4luad_prototypes.json")
    parser.add_argument("--folds", type=int, default=5, help="folds of the supervised reference")
    parser.add_argument("--accelerator", default=None, help="trainer.accelerator of the fits")
    parser.add_argument("--resume", action="store_true", help="keep the finished steps")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument added to the SSL and head fits, e.g. --override=--trainer.max_steps=2",
    )
    parser.add_argument(
        "--prototype-override",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument added to the prototype stage's commands",
    )
    args = parser.parse_args()
    data = Path(args.data_root).resolve()
    run = Path(args.run_dir).resolve()
    settings = {
        "data_root": str(data),
        "folds": args.folds,
        "accelerator": args.accelerator,
        "overrides": args.override,
        "prototype_overrides": args.prototype_override,
    }
    ledger = ChainLedger(run, settings, args.resume)
    logs = run / "logs"
    val_root = data / "validation"
    tuning = tuning_split(val_root / "mask")
    print(f"benchmark: tuning images (the simulated pathologist's masks): {' '.join(tuning)}")

    # 1. SSL encoder on the training patches.
    ssl_dir = run / "ssl"
    argv = [*fit_args(SSL_CONFIG, ssl_dir, args.accelerator), f"--data.root={data / 'training'}"]
    ledger.run("ssl", lambda: run_protoseg("ssl", [*argv, *args.override], logs), [ssl_dir])
    encoder = ssl_dir / "encoder.ckpt"

    # 2. Prototypes: clusters, names, dictionary; pseudo masks of training and validation.
    embedder = [f"--model.init_args.embedder.init_args.weights={encoder}"]
    dictionary, naming = prototype_steps(
        ledger, run, data, tuning, embedder, "", args.prototype_override
    )
    base = ["predict", f"--config={PROTOTYPE_CONFIG}", *embedder, f"--data.root={data}"]
    base += [*args.prototype_override, "--trainer.enable_progress_bar=false"]
    pseudo = run / "pseudo_masks"
    query(ledger, "pseudo_masks", base, dictionary, data / "training", pseudo)
    query(ledger, "pseudo_masks_val", base, dictionary, val_root, run / "pseudo_masks_val")

    # 3. The semantic head on the pseudo masks, then its maps of the validation images.
    head_dir = run / "head"
    argv = [*fit_args(HEAD_CONFIG, head_dir, args.accelerator), f"--data.root={data}"]
    argv += [f"--data.pseudo_mask_dir={pseudo}", *args.override]
    argv.append(f"--model.init_args.net.init_args.encoder_weights={encoder}")
    ledger.run("head", lambda: run_protoseg("head", argv, logs), [head_dir])
    checkpoint = head_dir / "checkpoints" / "last.ckpt"
    head_val = run / "head_val"
    predict = ["predict", f"--config={HEAD_CONFIG}", f"--ckpt_path={checkpoint}"]
    predict += [f"--data.root={val_root}", f"--output_dir={head_val}"]
    predict.append("--trainer.enable_progress_bar=false")
    ledger.run("head_predict", lambda: run_protoseg("head_predict", predict, logs), [head_val])

    # 4. Supervised reference: the same head on the validation masks, k-fold.
    supervised_val = run / "supervised_val"
    for fold in range(args.folds):
        fold_dir = run / "supervised" / f"fold{fold}"
        argv = [*fit_args(HEAD_CONFIG, fold_dir, args.accelerator), f"--data.root={data}"]
        argv += ["--data.pseudo_mask_dir=null", "--data.train_split=val"]
        argv += [f"--data.val_folds={args.folds}", f"--data.val_fold={fold}", *args.override]
        argv.append(f"--model.init_args.net.init_args.encoder_weights={encoder}")
        ledger.run(
            f"supervised_fold{fold}",
            lambda a=argv, f=fold: run_protoseg(f"supervised_fold{f}", a, logs),
            [fold_dir],
        )
        ledger.run(
            f"supervised_predict{fold}",
            lambda f=fold, d=fold_dir: predict_fold(f, args.folds, d, data, supervised_val, logs),
        )

    # 5. Network-free colour baseline: the prototype stage on optical density, no head.
    colour = [f"--model.init_args.embedder={COLOUR_EMBEDDER}"]
    colour_dictionary, colour_naming = prototype_steps(
        ledger, run, data, tuning, colour, "colour_", args.prototype_override
    )
    colour_base = ["predict", f"--config={PROTOTYPE_CONFIG}", *colour, f"--data.root={data}"]
    colour_base += [*args.prototype_override, "--trainer.enable_progress_bar=false"]
    colour_val = run / "colour_val"
    query(ledger, "colour_val", colour_base, colour_dictionary, val_root, colour_val)

    stages = {
        name: {k: record[k] for k in ("seconds", "peak_rss_mib")}
        for name, record in ledger.steps.items()
    }
    figures = {
        "dataset": "WSSS4LUAD (../shared/data/wsss4luad): 41 training patches, 31 validation "
        "images with masks",
        "tuning_images": tuning,
        "held_out_images": 31 - len(tuning),
        "simulated_pathologist": "protoseg name-clusters: the masks of the tuning images; a "
        "cluster is named with the class of >= 80% of its 10 tuning-image patches nearest the "
        "centroid (a patch's class: background if it covers > 50%, else its main tissue)",
        "clusters": naming,
        "pseudo_masks": scores(run / "pseudo_masks_val", val_root, tuning),
        "head": scores(head_val, val_root, tuning),
        "supervised_cv": {"folds": args.folds, **scores(supervised_val, val_root, tuning)},
        "colour_baseline": {"clusters": colour_naming, **scores(colour_val, val_root, tuning)},
        "stages": stages,
        "chain_seconds": round(
            sum(
                s["seconds"]
                for n, s in stages.items()
                if not n.startswith(("supervised", "colour"))
            ),
            1,
        ),
        "checkpoint": str(checkpoint),
        "predict_config": str((ROOT / HEAD_CONFIG).resolve()),
        "predict_command": f"protoseg predict --config {(ROOT / HEAD_CONFIG).resolve()} "
        f"--ckpt_path {checkpoint} --data.root DIR --output_dir OUT  (DIR/img/*.png)",
        "kept_steps": ledger.kept,
    }
    path = write_result(args.output, figures)
    head, pseudo_scores = figures["head"]["held_out"], figures["pseudo_masks"]["held_out"]
    print(
        f"benchmark: held-out mIoU: pseudo masks {pseudo_scores['miou']}, head {head['miou']}, "
        f"supervised {figures['supervised_cv']['held_out']['miou']}, colour "
        f"{figures['colour_baseline']['held_out']['miou']} -> {path}"
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
