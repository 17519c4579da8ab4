"""Label-free chain on MoNuSeg: PSM activation network -> pseudo masks -> segmentation head.

Chen et al., MICCAI 2023 (arXiv 2308.11144). No stage reads a label for training; the true
labels of the 30 training images only score the pseudo masks and the final head (a fit
score, not a held-out one; the test labels are held back). Writes parameters, the wall time
of each stage, the validation figures and the head's checkpoint.

    python benchmarks/monuseg_psm.py --data-root ../shared/data/monuseg/train \
        --output benchmarks/results/monuseg_psm.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    fresh_run_dir,
    label_free_chain,
    rounded,
    write_result,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/monuseg/train")
    parser.add_argument("--output", default="benchmarks/results/monuseg_psm.json")
    parser.add_argument("--psm-config", default="configs/psm/monuseg.yaml")
    parser.add_argument("--segment-config", default="configs/psm/segment_monuseg.yaml")
    parser.add_argument("--run-dir", default="runs/bench_psm")
    parser.add_argument("--segment-steps", type=int, default=None, help="override the config's")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    run_dir = fresh_run_dir(args.run_dir)
    chain = label_free_chain(
        args.psm_config, args.segment_config, run_dir, args.data_root, args.segment_steps
    )
    psm, segment = chain["stage"], chain["segment"]
    seconds = [chain[k] for k in ("stage_seconds", "pseudo_seconds", "segment_seconds")]
    figures = {
        "benchmark": "monuseg_psm",
        "configs": [args.psm_config, args.segment_config],
        "train_images": len(psm.datamodule.train_records),
        "labels_used_for_training": False,
        "validation_is_held_out": False,
        "psm": {
            "parameters": sum(p.numel() for p in psm.model.parameters()),
            "backbone_parameters": sum(p.numel() for p in psm.model.backbone.parameters()),
            "steps": psm.trainer.global_step,
            "max_steps": psm.trainer.max_steps,
            "train_wall_seconds": chain["stage_seconds"],
            "pseudo_mask_wall_seconds": chain["pseudo_seconds"],
            "pseudo_mask_validation": rounded(chain["stage_metrics"]),
        },
        "segment": {
            "parameters": sum(p.numel() for p in segment.model.parameters()),
            "steps": segment.trainer.global_step,
            "max_steps": segment.trainer.max_steps,
            "train_wall_seconds": chain["segment_seconds"],
            "validation": rounded(chain["segment_metrics"]),
        },
        "chain_wall_seconds": round(sum(seconds), 1),
        "pseudo_mask_dir": Path(chain["pseudo_dir"]).as_posix(),
        "checkpoint": Path(segment.trainer.checkpoint_callback.last_model_path).as_posix(),
    }
    path = write_result(args.output, figures)
    print(f"wrote {path}: pseudo masks {figures['psm']['pseudo_mask_validation']}")
    print(f"segmentation head {figures['segment']['validation']}")


if __name__ == "__main__":
    main()
