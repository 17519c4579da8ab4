"""``make bench-wsss4luad-camsam``: the CAM + SAM chain on WSSS4LUAD, stage by stage.

classifier fit -> CAM pseudo masks and CAM + SAM pseudo masks, each scored on the 31
validation images (their masks only score) and written for the 41 training images -> one
semantic head trained on each -> the heads scored on the validation images. Every stage runs
in its own process (``benchmarks.stage_process``), so that its wall time and peak memory are
its own; finished stages are kept in ``RUN_DIR/stages.json`` and ``--resume`` skips them.
The figures go to ``benchmarks/results/wsss4luad_camsam.json`` beside those of the prototype
chain (``benchmarks/results/wsss4luad_prototypes.json``, when present).
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

CLASSIFIER = "configs/cam_sam/classifier_wsss4luad.yaml"
PSEUDO = "configs/cam_sam/pseudo_wsss4luad.yaml"
HEAD = "configs/wsss4luad/segment.yaml"
PROTOTYPES = "benchmarks/results/wsss4luad_prototypes.json"
# The chain whose head is the benchmark's answer (its checkpoint is scored on the held-back
# test images), fixed before any figure was seen: the method.
ANSWER = "cam_sam"


def run_stage(name: str, command: str, args: list[str], run_dir: Path) -> dict[str, Any]:
    """Runs ``protoseg COMMAND ARGS`` in a child process; its metrics, wall time and peak
    resident memory (``os.wait4``: this child's own)."""
    out = run_dir / "stages" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "benchmarks.stage_process", str(out), command, *args]
    print(f"benchmark: {name}: protoseg {command} {' '.join(args)}", flush=True)
    start = time.perf_counter()
    child = subprocess.Popen(argv)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/wsss4luad")
    parser.add_argument("--run-dir", default="runs/bench_wsss4luad_camsam")
    parser.add_argument("--output", default="benchmarks/results/wsss4luad_camsam.json")
    parser.add_argument("--accelerator", default="cpu", help="every stage's (e.g. gpu)")
    parser.add_argument("--classifier-steps", type=int, default=None, help="config's if None")
    parser.add_argument("--head-steps", type=int, default=None, help="config's if None")
    parser.add_argument(
        "--sam-tile", type=int, default=None, help="SAM tile side, px (config's if None)"
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

    def stage(name: str, command: str, stage_args: list[str]) -> dict[str, Any]:
        if name not in ledger:
            ledger[name] = run_stage(name, command, [*stage_args, *common], run_dir)
            write_text_atomic(ledger_path, json.dumps(ledger, indent=2) + "\n")
        return ledger[name]

    def fit_args(config: str, folder: Path, steps: int | None) -> list[str]:
        return [
            f"--config={config}",
            f"--trainer.default_root_dir={folder}",
            f"--trainer.logger.init_args.save_dir={folder}",
            f"--trainer.callbacks.init_args.dirpath={folder}/checkpoints",
            "--trainer.check_val_every_n_epoch=1000",
            "--trainer.num_sanity_val_steps=0",
            *([] if steps is None else [f"--trainer.max_steps={steps}"]),
        ]

    classifier_dir = run_dir / "classifier"
    stage("classifier fit", "fit", fit_args(CLASSIFIER, classifier_dir, args.classifier_steps))
    classifier_ckpt = f"--model.init_args.classifier_ckpt={classifier_dir}/checkpoints/last.ckpt"
    pseudo: dict[str, dict[str, Any]] = {}
    heads: dict[str, dict[str, Any]] = {}
    variants = {"cam": "false", "cam_sam": "true"}

    def pseudo_args(variant: str) -> list[str]:
        return [
            f"--config={PSEUDO}",
            classifier_ckpt,
            f"--model.init_args.sam={variants[variant]}",
            f"--trainer.default_root_dir={run_dir / variant}",
            *([] if args.sam_tile is None else [f"--model.init_args.tile={args.sam_tile}"]),
        ]

    # The pseudo masks' figures first (the comparison the chain is about), then each variant's
    # training pseudo masks and head.
    for variant in variants:
        pseudo[variant] = stage(
            f"{variant} pseudo masks validation", "validate", pseudo_args(variant)
        )
    for variant in variants:
        masks = run_dir / variant / "pseudo_masks"
        pseudo[variant]["writing"] = stage(
            f"{variant} pseudo masks", "predict", [*pseudo_args(variant), f"--output_dir={masks}"]
        )
        head_dir = run_dir / variant / "head"
        head = [f"--data.pseudo_mask_dir={masks}"]
        fit = stage(
            f"{variant} head fit", "fit", [*fit_args(HEAD, head_dir, args.head_steps), *head]
        )
        ckpt = head_dir / "checkpoints" / "last.ckpt"
        heads[variant] = stage(
            f"{variant} head validation",
            "validate",
            [f"--config={HEAD}", *head, f"--ckpt_path={ckpt}"],
        )
        heads[variant]["fit"] = fit
        heads[variant]["checkpoint"] = str(ckpt.resolve())

    def scores(record: dict[str, Any]) -> dict[str, float]:
        return rounded({k: v for k, v in record["metrics"].items() if k.startswith("val/")})

    def cost(record: dict[str, Any]) -> dict[str, Any]:
        keys = ("wall_seconds", "peak_rss_gib", "gpu_peak_memory_gib")
        return {key: record[key] for key in keys if key in record}

    prototypes = Path(PROTOTYPES)
    figures = {
        "dataset": "WSSS4LUAD subset (41 training patches, image-level labels)",
        "validation_images": args.data_root + "/validation (31 images; masks only score)",
        "cam_pseudo_masks": scores(pseudo["cam"]),
        "cam_sam_pseudo_masks": scores(pseudo["cam_sam"]),
        "head_on_cam": scores(heads["cam"]),
        "head_on_cam_sam": scores(heads["cam_sam"]),
        "prototype_chain": json.loads(prototypes.read_text()) if prototypes.is_file() else None,
        "stages": {name: cost(record) for name, record in ledger.items()},
        "chain_wall_seconds": round(sum(r["wall_seconds"] for r in ledger.values()), 1),
        "checkpoint": heads[ANSWER]["checkpoint"],
        "predict_config": HEAD,
        "predict_command": (
            f"protoseg predict --config {HEAD} --ckpt_path {heads[ANSWER]['checkpoint']} "
            "--data.root DIR --output_dir OUT  # DIR holds img/ (or images/)"
        ),
    }
    print(json.dumps({k: figures[k] for k in list(figures)[2:6]}, indent=2))
    print(f"benchmark: wrote {write_result(args.output, figures)}")


if __name__ == "__main__":
    main()
