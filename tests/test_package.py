"""Importing protoseg: no network access at import time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Counts the URLs urllib is asked to open (its audit event) while a module is imported, and
# refuses each one, so the test itself never reaches the network (albumentations catches the
# error of its update check and goes on).
CODE = """
import sys
opened = []
def refuse(event, args):
    if event == "urllib.Request":
        opened.append(args[0])
        raise ConnectionRefusedError("refused by the test")
sys.addaudithook(refuse)
import {module}
print(len(opened))
"""


def _urls_opened(module: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", CODE.format(module=module)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return int(done.stdout.strip().splitlines()[-1])


def test_albumentations_alone_would_ask_pypi_for_updates() -> None:
    # The hook sees the check: without this, the test below could pass vacuously.
    assert _urls_opened("albumentations") >= 1


def test_importing_protoseg_opens_no_url() -> None:
    assert _urls_opened("protoseg.data.transforms") == 0
