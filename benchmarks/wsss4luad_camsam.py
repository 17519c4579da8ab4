"""``make bench-wsss4luad-camsam``: the CAM + SAM chain on WSSS4LUAD, stage by stage.

classifier fit (a class layer on LiteMedSAM's frozen image encoder; its embeddings computed
once per image into ``--embedding-cache``) -> CAM pseudo masks and CAM + SAM pseudo
masks (SAM decoding the same embeddings), each scored on the validation images (their masks
only score) and written for the 41 training images -> one semantic head (on the same frozen
encoder) trained on each -> the heads scored on the validation images. Every figure is given
on the 31 validation images and on the 21 that no setting was chosen on (the *report fold*:
all but the tuning fold :data:`TUNE`), beside the prototype chain's figures (from
``benchmarks/results/wsss4luad_prototypes.json``; its 25 held-out images). Every
stage runs in its own process (``benchmarks.stage_process``), so that its wall time and peak
memory are its own; finished stages are kept in ``RUN_DIR/stages.json`` and ``--resume``
skips them.

The encoder's embeddings are a cache, not a result: keyed by the image's pixels, the settings
and the checksummed weights, they are the same whichever run computes them. The default
folder (``runs/sam_embeddings``) is kept between runs, so a rerun encodes nothing; the results
file says how many embeddings this run computed and how many it read, and the stages' wall
times hold only the encoder passes this run made (a fresh clone makes them all).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import fresh_run_dir, rounded, write_result
from protoseg.io.images import write_text_atomic
from protoseg.summary import summary_row

CLASSIFIER = "configs/cam_sam/classifier_encoder_wsss4luad.yaml"
PSEUDO = "configs/cam_sam/pseudo_wsss4luad.yaml"
HEAD = "configs/cam_sam/segment_encoder_wsss4luad.yaml"
PROTOTYPES = "benchmarks/results/wsss4luad_prototypes.json"
#: The validation images every setting of the frozen-encoder CAMs and of SAM's filter was
#: chosen on (benchmarks/wsss4luad_encoder_cam.py); the other 21 are the report fold.
TUNE = ("00", "01", "02", "05", "06", "08", "12", "14", "18", "25")
#: The scored sets: name -> validation stems left out.
FOLDS = {"all_31": (), "report_fold": TUNE}
EMBEDDER = "--model.init_args.net.init_args.embedder.init_args.cache_dir"
STUDY = "benchmarks.wsss4luad_camsam_predict"


def run_stage(name: str, command: str, args: list[str], run_dir: Path) -> dict[str, Any]:
    """Runs ``protoseg COMMAND ARGS`` in a child process; its metrics, wall time and peak
    resident memory (``os.wait4``: this child's own)."""
    out = run_dir / "stages" / f"{name}.json"
    argv = ["-m", "benchmarks.stage_process", str(out), command, *args]
    print(f"benchmark: {name}: protoseg {command} {' '.join(args)}", flush=True)
    return run_child(name, argv, out)


def run_child(name: str, argv: list[str], out: Path) -> dict[str, Any]:
    """Runs ``python ARGV`` (which writes its record to ``out``) in a child process; the record
    with the child's wall time and peak resident memory."""
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, *argv])
    _, status, usage = os.wait4(child.pid, 0)
    seconds = round(time.perf_counter() - start, 1)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"benchmark: stage {name} failed with status {code}")
    record = json.loads(out.read_text())
    record["wall_seconds"] = seconds
    record["peak_rss_gib"] = round(usage.ru_maxrss / 2**20, 3)  # ru_maxrss is in KiB
    print(f"benchmark: {name} in {seconds} s, peak {record['peak_rss_gib']} GiB", flush=True)
    return record


def exclude_arg(stems: tuple[str, ...]) -> list[str]:
    """``--data.val_exclude`` of validation stems (quoted: ``00`` is a name, not a number)."""
    return [f"--data.val_exclude=[{', '.join(json.dumps(s) for s in stems)}]"] if stems else []


def tuning_exclude(data_root: str) -> tuple[str, ...]:
    """The validation stems outside :data:`TUNE` (left out to score the tuning fold)."""
    stems = sorted(p.stem for p in (Path(data_root) / "validation" / "img").glob("*.png"))
    return tuple(s for s in stems if s not in TUNE)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/wsss4luad")
    parser.add_argument("--run-dir", default="runs/bench_wsss4luad_camsam")
    parser.add_argument("--output", default="benchmarks/results/wsss4luad_camsam.json")
    parser.add_argument("--accelerator", default="cpu", help="every stage's (e.g. gpu)")
    parser.add_argument("--classifier-steps", type=int, default=None, help="config's if None")
    parser.add_argument("--head-steps", type=int, default=None, help="config's if None")
    parser.add_argument(
        "--embedding-cache",
        default="runs/sam_embeddings",
        help="folder of the frozen encoder's embeddings (kept between runs)",
    )
    parser.add_argument("--resume", action="store_true", help="keep RUN_DIR's finished stages")
    parser.add_argument(
        "--override", action="append", default=[], metavar="ARG", help="added to every stage"
    )
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    ledger_path = run_dir / "stages.json"
    if args.resume and ledger_path.is_file():
        ledger: dict[str, Any] = json.loads(ledger_path.read_text())
    else:
        fresh_run_dir(run_dir)
        ledger = {}
    common = [
        f"--data.root={args.data_root}",
        f"--trainer.accelerator={args.accelerator}",
        *args.override,
    ]
    cache_dir = Path(args.embedding_cache).resolve()
    cached_before = {p.name for p in cache_dir.glob("*.npy")}
    cache = f"{EMBEDDER}={cache_dir}"

    def stage(name: str, command: str, stage_args: list[str]) -> dict[str, Any]:
        if name not in ledger:
            ledger[name] = run_stage(name, command, [*stage_args, *common], run_dir)
            write_text_atomic(ledger_path, json.dumps(ledger, indent=2) + "\n")
        return ledger[name]

    def fit_args(config: str, folder: Path, steps: int | None) -> list[str]:
        return [
            f"--config={config}",
            cache,
            f"--trainer.default_root_dir={folder}",
            f"--trainer.logger.init_args.save_dir={folder}",
            f"--trainer.callbacks.init_args.dirpath={folder}/checkpoints",
            "--trainer.check_val_every_n_epoch=1000",
            "--trainer.num_sanity_val_steps=0",
            *([] if steps is None else [f"--trainer.max_steps={steps}"]),
        ]

    def scored(
        name: str, stage_args: list[str], folds: dict[str, tuple[str, ...]] = FOLDS
    ) -> dict[str, dict[str, Any]]:
        """A validate stage on each fold of ``folds``."""
        return {
            fold: stage(f"{name} [{fold}]", "validate", [*stage_args, *exclude_arg(left_out)])
            for fold, left_out in folds.items()
        }

    classifier_dir = run_dir / "classifier"
    classifier = stage(
        "classifier fit", "fit", fit_args(CLASSIFIER, classifier_dir, args.classifier_steps)
    )
    classifier_ckpt = f"--model.init_args.classifier_ckpt={classifier_dir}/checkpoints/last.ckpt"
    variants = {"cam": "false", "cam_sam": "true"}

    def pseudo_args(variant: str) -> list[str]:
        return [
            f"--config={PSEUDO}",
            classifier_ckpt,
            f"--model.init_args.sam={variants[variant]}",
            # Each turn of an image is another encoder pass: the frozen-encoder CAMs are read
            # as they are (the rotation average is the ResNet-18 classifier's).
            "--model.init_args.rotations=1",
            f"--trainer.default_root_dir={run_dir / variant}",
        ]

    # The pseudo masks' figures first (the comparison the chain is about), then each variant's
    # training pseudo masks and head.
    pseudo = {v: scored(f"{v} pseudo masks validation", pseudo_args(v)) for v in variants}
    heads: dict[str, dict[str, Any]] = {}
    for variant in variants:
        masks = run_dir / variant / "pseudo_masks"
        writing = stage(
            f"{variant} pseudo masks", "predict", [*pseudo_args(variant), f"--output_dir={masks}"]
        )
        head_dir = run_dir / variant / "head"
        head = [f"--data.pseudo_mask_dir={masks}"]
        fit = stage(
            f"{variant} head fit", "fit", [*fit_args(HEAD, head_dir, args.head_steps), *head]
        )
        ckpt = head_dir / "checkpoints" / "last.ckpt"
        validation = [f"--config={HEAD}", cache, *head, f"--ckpt_path={ckpt}"]
        heads[variant] = {
            "scores": scored(f"{variant} head validation", validation),
            "writing": writing,
            "fit": fit,
            "checkpoint": str(ckpt.resolve()),
        }

    # The answer for a new image (no label): the classifier's CAMs on the classes it predicts
    # (CAMClassifierModule's predict; label_threshold and val_rotations of its config), as
    # protoseg validates it, on the tuning fold (where the label-free alternatives were
    # compared, below) and the scored folds.
    classifier_ckpt_path = classifier_dir / "checkpoints" / "last.ckpt"
    label_free_dir = run_dir / "label_free"
    label_free = scored(
        "cam label-free predictions validation",
        [
            f"--config={CLASSIFIER}",
            cache,
            f"--ckpt_path={classifier_ckpt_path}",
            "--model.init_args.val_labels=predicted",
            f"--trainer.default_root_dir={label_free_dir}",
            f"--trainer.logger.init_args.save_dir={label_free_dir}",
            f"--trainer.callbacks.init_args.dirpath={label_free_dir}/checkpoints",
        ],
        {"tuning": tuning_exclude(args.data_root), **FOLDS},
    )
    # The label-free alternatives side by side (benchmarks/wsss4luad_camsam_predict.py): the
    # CAMs gated by predicted labels at each threshold, each head alone and gated.
    study_out = run_dir / "label_free_study.json"
    if "label-free study" not in ledger:
        study_argv = [
            "-m",
            STUDY,
            f"--data-root={args.data_root}",
            f"--classifier={classifier_ckpt_path}",
            "--rotations",
            "1",
            "4",
            *(f"--head={v}={heads[v]['checkpoint']}" for v in variants),
            f"--output={study_out}",
        ]
        print(f"benchmark: label-free study: python {' '.join(study_argv)}", flush=True)
        ledger["label-free study"] = run_child("label-free study", study_argv, study_out)
        write_text_atomic(ledger_path, json.dumps(ledger, indent=2) + "\n")
    study = ledger["label-free study"]

    def scores(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
        return {
            fold: rounded(
                {
                    k.removeprefix("val/"): v
                    for k, v in record["metrics"].items()
                    if k.startswith("val/")
                }
            )
            for fold, record in records.items()
        }

    def cost(record: dict[str, Any]) -> dict[str, Any]:
        keys = ("wall_seconds", "peak_rss_gib", "gpu_peak_memory_gib")
        return {key: record[key] for key in keys if key in record}

    embeddings = sorted(cache_dir.glob("*.npy"))
    prototypes = Path(PROTOTYPES)
    prototype_chain = json.loads(prototypes.read_text()) if prototypes.is_file() else None
    figures: dict[str, Any] = {
        # Written only after every stage ran (a failed stage stops the benchmark before).
        "complete": True,
        "dataset": "WSSS4LUAD subset (41 training patches, image-level labels)",
        "validation_images": args.data_root + "/validation (31 images; masks only score)",
        "folds": {
            "all_31": "every validation image",
            "report_fold": f"the 21 not in the tuning fold {list(TUNE)}, on which the class "
            "layer's pooling / r / crop and SAM's filter were chosen",
        },
        "image_level_label_of_validation_images": "the classes present in its mask (pseudo "
        "masks only; the heads see no label)",
        "classifier": "1x1 class layer + LSE (r = 5) pooling on 16 x 16-cell crops of LiteMedSAM's "
        "frozen TinyViT embeddings (images at half size, 256 px tiles)",
        "classifier_validation": scores({"all_31": classifier}).get("all_31"),
        "cam_pseudo_masks": scores(pseudo["cam"]),
        "cam_sam_pseudo_masks": scores(pseudo["cam_sam"]),
        "head_on_cam": scores(heads["cam"]["scores"]),
        "head_on_cam_sam": scores(heads["cam_sam"]["scores"]),
        "cam_label_free_predictions": scores(label_free),
        "label_free_study": {
            "file": str(study_out),
            "chosen_on_tuning_fold": study["chosen_on_tuning_fold"],
            "miou": {
                method: {fold: s["miou"] for fold, s in folds.items()}
                for method, folds in study["scores"].items()
            },
        },
        "prototype_chain": None
        if prototype_chain is None
        else {
            key: prototype_chain.get(key)
            for key in ("pseudo_masks", "head", "head_steps", "chain_wall_seconds", "checkpoint")
        },
        "embeddings": {
            "folder": str(cache_dir),
            "files": len(embeddings),
            "computed_by_this_run": len({p.name for p in embeddings} - cached_before),
            "there_before_this_run": len(cached_before),
            "mib": round(sum(p.stat().st_size for p in embeddings) / 2**20, 1),
        },
        "stages": {name: cost(record) for name, record in ledger.items()},
        "chain_wall_seconds": round(sum(r["wall_seconds"] for r in ledger.values()), 1),
        # The answer scored on the held-back test images: the label-free CAMs (the heads'
        # checkpoints: heads.*).
        "answer": "the classifier's CAMs on the image-level labels it predicts (no label "
        "read at test time)",
        "checkpoint": str(classifier_ckpt_path.resolve()),
        "predict_config": CLASSIFIER,
        "predict_command": (
            f"protoseg predict --config {CLASSIFIER} --ckpt_path "
            f"{classifier_ckpt_path.resolve()} --data.root DIR --output_dir OUT  "
            "# DIR holds img/ (or images/)"
        ),
        "heads": {v: {"checkpoint": heads[v]["checkpoint"], "predict_config": HEAD} for v in heads},
    }
    figures["summary"] = summary_rows(figures)
    print(
        json.dumps(
            {
                k: figures[k]
                for k in (
                    "cam_pseudo_masks",
                    "cam_sam_pseudo_masks",
                    "head_on_cam",
                    "head_on_cam_sam",
                    "cam_label_free_predictions",
                )
            },
            indent=2,
        )
    )
    print(f"benchmark: wrote {write_result(args.output, figures)}")


def summary_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """The README table's rows: the report fold's figures (held out from every choice)."""
    keys = ("miou", "fwiou", "iou_tumor", "iou_stroma", "iou_normal")
    stages = figures["stages"]

    def seconds(*names: str) -> float:
        return round(sum(stages[n]["wall_seconds"] for n in names if n in stages), 1)

    rows = []
    for name, key, steps in (
        ("CAM pseudo masks (frozen LiteMedSAM encoder + class layer)", "cam_pseudo_masks", ()),
        ("CAM + LiteMedSAM pseudo masks (EPLC-SAM filter)", "cam_sam_pseudo_masks", ()),
        (
            "CAM + SAM chain's answer: CAMs on predicted image labels (no label at test time)",
            "cam_label_free_predictions",
            ("cam label-free predictions validation [report_fold]",),
        ),
        (
            "frozen-encoder head on the CAM + SAM pseudo masks",
            "head_on_cam_sam",
            ("cam_sam pseudo masks", "cam_sam head fit"),
        ),
    ):
        metrics = figures[key].get("report_fold")
        names = ["classifier fit", *steps]
        rows.append(
            summary_row(
                name,
                "image-level",
                "held-out",
                None if metrics is None else {k: metrics[k] for k in keys if k in metrics},
                images=21,
                data="wsss4luad/validation",
                wall_seconds=seconds(*names),
                precision="32-true",
            )
        )
    return rows


if __name__ == "__main__":
    main()
