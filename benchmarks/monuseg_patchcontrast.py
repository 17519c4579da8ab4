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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.chain import add_chain_arguments, chain_figures, label_free_chain  # noqa: E402
from benchmarks.common import write_result  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_chain_arguments(parser, "monuseg_patchcontrast")
    parser.add_argument("--fcnn-config", default="configs/patch_contrast/monuseg.yaml")
    parser.add_argument("--segment-config", default="configs/patch_contrast/segment_monuseg.yaml")
    return parser.parse_args()


def fcnn_figures(cli: Any) -> dict[str, Any]:
    """Size, steps, convergence and information separation of the fitted FCNN."""
    fcnn = cli.model
    separation = fcnn.separation.tolist()
    return {
        "parameters": sum(p.numel() for p in fcnn.net.parameters()),
        "steps": cli.trainer.global_step,
        "max_steps": cli.trainer.max_steps,
        "converged_at_step": fcnn.converged_at_step,
        "separation_positive": round(separation[0], 4),
        "separation_negative": round(separation[1], 4),
    }


def main() -> None:
    args = parse_args()
    chain = label_free_chain(
        args.fcnn_config,
        args.segment_config,
        args.run_dir,
        args.data_root,
        args.segment_steps,
        accelerator=args.accelerator,
        stage_figures=fcnn_figures,
        overrides=args.override,
        resume=args.resume,
        head_overrides=args.head_override,
    )
    configs = [args.fcnn_config, args.segment_config]
    figures = chain_figures("monuseg_patchcontrast", configs, chain, "fcnn")
    path = write_result(args.output, figures)
    print(f"wrote {path}: pseudo masks {figures['fcnn']['pseudo_mask_validation']}")
    print(f"segmentation head {figures['segment']['validation']}")


if __name__ == "__main__":
    main()
