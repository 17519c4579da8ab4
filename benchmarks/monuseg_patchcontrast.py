"""Label-free chain on MoNuSeg: patch-contrastive FCNN -> pseudo masks -> segmentation head.

No stage reads a label for training; the true labels of the 30 training images only score
the pseudo masks and the final head (a fit score, not a held-out one; the test labels are
held back). Writes parameters, the wall time of each stage and the validation figures.

    python benchmarks/monuseg_patchcontrast.py --data-root ../shared/data/monuseg/train \
        --output benchmarks/results/monuseg_patchcontrast.json
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
    parser.add_argument("--output", default="benchmarks/results/monuseg_patchcontrast.json")
    parser.add_argument("--fcnn-config", default="configs/patch_contrast/monuseg.yaml")
    parser.add_argument("--segment-config", default="configs/patch_contrast/segment_monuseg.yaml")
    parser.add_argument("--run-dir", default="runs/bench_patchcontrast")
    parser.add_argument("--segment-steps", type=int, default=None, help="override the config's")
    parser.add_argument(
        "--accelerator", default=None, help="every stage's trainer.accelerator (e.g. gpu)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    run_dir = fresh_run_dir(args.run_dir)
    chain = label_free_chain(
        args.fcnn_config,
        args.segment_config,
        run_dir,
        args.data_root,
        args.segment_steps,
        accelerator=args.accelerator,
    )
    fcnn = chain["stage"]
    separation = fcnn.model.separation.tolist()
    stage = {
        "parameters": sum(p.numel() for p in fcnn.model.net.parameters()),
        "steps": fcnn.trainer.global_step,
        "max_steps": fcnn.trainer.max_steps,
        "converged_at_step": fcnn.model.converged_at_step,
        "separation_positive": round(separation[0], 4),
        "separation_negative": round(separation[1], 4),
    }
    configs = [args.fcnn_config, args.segment_config]
    figures = chain_figures("monuseg_patchcontrast", configs, chain, "fcnn", stage)
    path = write_result(args.output, figures)
    print(f"wrote {path}: pseudo masks {figures['fcnn']['pseudo_mask_validation']}")
    print(f"segmentation head {figures['segment']['validation']}")


if __name__ == "__main__":
    main()
