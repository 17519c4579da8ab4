"""Label-free chain on MoNuSeg: PSM activation network -> pseudo masks -> centre detector ->
segmentation head.

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
    chain_figures,
    fresh_run_dir,
    label_free_chain,
    write_result,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/monuseg/train")
    parser.add_argument("--output", default="benchmarks/results/monuseg_psm.json")
    parser.add_argument("--psm-config", default="configs/psm/monuseg.yaml")
    parser.add_argument("--detector-config", default="configs/psm/detect_monuseg.yaml")
    parser.add_argument("--segment-config", default="configs/psm/segment_monuseg.yaml")
    parser.add_argument("--run-dir", default="runs/bench_psm")
    parser.add_argument("--segment-steps", type=int, default=None, help="override the config's")
    parser.add_argument(
        "--accelerator", default=None, help="every stage's trainer.accelerator (e.g. gpu)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    run_dir = fresh_run_dir(args.run_dir)
    chain = label_free_chain(
        args.psm_config,
        args.segment_config,
        run_dir,
        args.data_root,
        args.segment_steps,
        detector_config=args.detector_config,
        accelerator=args.accelerator,
    )
    psm = chain["stage"]
    stage = {
        "parameters": sum(p.numel() for p in psm.model.parameters()),
        "backbone_parameters": sum(p.numel() for p in psm.model.backbone.parameters()),
        "steps": psm.trainer.global_step,
        "max_steps": psm.trainer.max_steps,
    }
    configs = [args.psm_config, args.detector_config, args.segment_config]
    figures = chain_figures("monuseg_psm", configs, chain, "psm", stage)
    path = write_result(args.output, figures)
    print(f"wrote {path}: pseudo masks {figures['psm']['pseudo_mask_validation']}")
    print(f"centre detector {figures['detector']['validation']}")
    print(f"segmentation head {figures['segment']['validation']}")


if __name__ == "__main__":
    main()
