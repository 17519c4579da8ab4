"""Times ``make quickstart`` (the README's first command after install) end to end.

The budget is 3 minutes of wall time on a 2-core CPU without bf16 (float32); emulate one on a
CPU with bf16 with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` and
``-- --trainer.precision=32-true``. Writes the chain's result (its steps, figures and summary
rows, whose time is the whole command's) with the whole command's wall time, the budget, the
machine (its load average: the timing is the machine's own only where that stays below its
core count), the commit and the date.

    python benchmarks/quickstart.py --output benchmarks/results/quickstart.json \
        -- --trainer.precision=32-true
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protoseg.provenance import write_result  # noqa: E402

BUDGET_SECONDS = 180.0
RESULT = ROOT / "runs" / "quickstart" / "result.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/results/quickstart.json")
    parser.add_argument("chain_args", nargs="*", help="QUICKSTART_ARGS of the make target")
    args = parser.parse_args()
    command = ["make", "-s", "quickstart", f"QUICKSTART_ARGS={shlex.join(args.chain_args)}"]
    RESULT.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    seconds = round(time.perf_counter() - start, 1)
    chain = json.loads(RESULT.read_text())
    figures = {
        key: value
        for key, value in chain.items()
        if key not in ("command", "date", "source", "machine")
    }
    # The README's rows show what the quick start costs a user: the whole command.
    for row in figures.get("summary", []):
        row["wall_seconds"] = seconds
    path = write_result(
        args.output,
        {
            "benchmark": "quickstart",
            "make_command": shlex.join(command),
            "wall_seconds": seconds,
            "budget_seconds": BUDGET_SECONDS,
            "within_budget": seconds <= BUDGET_SECONDS,
            **figures,
        },
    )
    print(f"wrote {path}: make quickstart in {seconds} s (budget {BUDGET_SECONDS:.0f} s)")


if __name__ == "__main__":
    main()
