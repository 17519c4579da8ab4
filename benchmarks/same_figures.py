"""Whether a change of code leaves a stage's figures as they were.

Runs one ``protoseg`` LightningCLI command (``validate`` or ``test`` of a checkpoint) with the
code of each of several git commits, in this environment, and compares the figures to the
4th decimal; exits 1 when they differ. The proof that post-processing as a part changed no
figure (docs/postprocessing.md):

    python benchmarks/same_figures.py --commits e596ce4 HEAD \\
        --out benchmarks/results/postprocess_same_figures.json -- \\
        validate --config configs/psm/segment_monuseg.yaml --ckpt_path HEAD.ckpt \\
        --data.root ../shared/data/monuseg/train --data.pseudo_mask_dir PSEUDO_MASKS \\
        --trainer.accelerator cpu --trainer.logger false

Each commit's tree is unpacked (``git archive``) into a temporary folder and the command runs
in a child process there, that tree first on ``sys.path`` (so relative config paths are the
commit's own); the installed dependencies are this environment's. Relative paths in the
command resolve in the commit's tree: give the checkpoint and data as absolute paths.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402

MARK = "FIGURES "
CHILD = f"""
import json, sys
sys.path.insert(0, sys.argv[1])
from protoseg.cli import build_cli
cli = build_cli(sys.argv[2:])
metrics = {{k: float(v) for k, v in sorted(cli.trainer.callback_metrics.items()) if "/" in k}}
print({MARK!r} + json.dumps(metrics), flush=True)
"""
#: The figures compared to the 4th decimal (any prefix: ``val/``, ``test/``).
FOUR = ("pixel_dice", "object_dice", "aji", "pq")


def commit_id(commit: str) -> str:
    """The full hash of ``commit`` in this repository."""
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def unpack(commit: str, folder: Path) -> Path:
    """The tree of ``commit`` unpacked into ``folder`` (``git archive``)."""
    folder.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def figures_in(lines: Iterable[str]) -> dict[str, float]:
    """The figures the child printed (its last ``FIGURES {...}`` line).

    Raises:
        ValueError: no such line (the command failed or was not validate/test).
    """
    found = None
    for line in lines:
        if line.startswith(MARK):
            found = json.loads(line[len(MARK) :])
    if found is None:
        raise ValueError("the command printed no figures")
    return found


def run_at(tree: Path, command: Sequence[str]) -> dict[str, float]:
    """``command`` run with the code of ``tree``; its figures. Its output goes on to ours."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tree), *command],
        cwd=tree,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    assert child.stdout is not None
    for line in child.stdout:
        sys.stdout.write(line)
        lines.append(line.rstrip("\n"))
    if child.wait() != 0:
        raise SystemExit(f"same_figures: the command failed at {tree} (exit {child.returncode})")
    return figures_in(lines)


def compare(by_commit: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Whether every commit gave the first one's :data:`FOUR` figures to the 4th decimal,
    and the largest difference of any figure."""
    first, *others = by_commit.values()
    keys = sorted(set.intersection(*(set(f) for f in by_commit.values())))
    four = [k for k in keys if k.rsplit("/", 1)[-1] in FOUR]
    if len(four) != len(FOUR):
        raise ValueError(f"the figures lack some of {FOUR}: {keys}")
    same = all(round(o[k], 4) == round(first[k], 4) for o in others for k in four)
    largest = max((abs(o[k] - first[k]) for o in others for k in keys), default=0.0)
    return {"compared": four, "same_to_4th_decimal": same, "max_abs_difference": largest}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", nargs="+", required=True, help="git revisions, oldest first")
    parser.add_argument("--out", type=Path, help="result JSON (default: none written)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- validate|test ARGS")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command[:1] not in (["validate"], ["test"]):
        parser.error("give the command after --: validate ARGS or test ARGS")
    by_commit: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="same_figures_") as scratch:
        for commit in args.commits:
            full = commit_id(commit)
            tree = unpack(full, Path(scratch) / full)
            start = time.perf_counter()
            by_commit[full] = run_at(tree, command)
            seconds[full] = round(time.perf_counter() - start, 1)
    verdict = compare(by_commit)
    for full, figures in by_commit.items():
        row = "  ".join(f"{k} {figures[k]:.6f}" for k in verdict["compared"])
        print(f"same_figures: {full[:10]}  {row}")
    print(f"same_figures: same to the 4th decimal: {verdict['same_to_4th_decimal']}")
    if args.out is not None:
        commits = {c: {"figures": f, "seconds": seconds[c]} for c, f in by_commit.items()}
        write_result(args.out, {"protoseg_command": command, "commits": commits, **verdict})
    if not verdict["same_to_4th_decimal"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
