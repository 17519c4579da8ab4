"""Label-free chain on MoNuSeg: PSM activation network -> pseudo masks -> centre detector ->
segmentation head.

Chen et al., MICCAI 2023 (arXiv 2308.11144). No stage reads a label for training; the true
labels of the 30 training images only score the pseudo masks and the final head (a fit
score, not a held-out one; the test labels are held back). With
``--override=--data.init_args.val_fraction=0.2`` every stage trains on 24 of them and the
figures are the 6 held out (``make bench-monuseg-psm-holdout``). Writes parameters, the wall
time of each stage, the validation figures and the head's checkpoint.

    python benchmarks/monuseg_psm.py --data-root ../shared/data/monuseg/train \
        --output benchmarks/results/monuseg_psm.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.chain import (  # noqa: E402
    add_chain_arguments,
    chain_figures,
    label_free_chain,
    trained_figures,
)
from benchmarks.common import write_result  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_chain_arguments(parser, "monuseg_psm")
    parser.add_argument("--psm-config", default="configs/psm/monuseg.yaml")
    parser.add_argument("--detector-config", default="configs/psm/detect_monuseg.yaml")
    parser.add_argument("--segment-config", default="configs/psm/segment_monuseg.yaml")
    return parser.parse_args()


def psm_figures(cli: Any) -> dict[str, Any]:
    """Sizes and steps of the fitted activation network."""
    backbone = sum(p.numel() for p in cli.model.backbone.parameters())
    return {**trained_figures(cli), "backbone_parameters": backbone}


def main() -> None:
    args = parse_args()
    chain = label_free_chain(
        args.psm_config,
        args.segment_config,
        args.run_dir,
        args.data_root,
        args.segment_steps,
        detector_config=args.detector_config,
        accelerator=args.accelerator,
        stage_figures=psm_figures,
        overrides=args.override,
        resume=args.resume,
        head_overrides=args.head_override,
    )
    configs = [args.psm_config, args.detector_config, args.segment_config]
    figures = chain_figures("monuseg_psm", configs, chain, "psm")
    path = write_result(args.output, figures)
    print(f"wrote {path}: pseudo masks {figures['psm']['pseudo_mask_validation']}")
    print(f"centre detector {figures['detector']['validation']}")
    print(f"segmentation head {figures['segment']['validation']}")


if __name__ == "__main__":
    main()
