"""README.md and docs/ point only at files that are in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) links, and `configs/...yaml` / `docs/...md` paths named in code spans.
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
NAMED = re.compile(r"`((?:configs|docs|benchmarks|samples)/[\w./-]+\.(?:yaml|md|json|py))`")
# Top-level documents named in prose (MISSION.md, DEVELOPERS.md were named and absent).
TOP_LEVEL = re.compile(r"\b([A-Z][A-Z_]+\.md)\b")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_and_named_file_exists(page: Path) -> None:
    text = page.read_text()
    links = [t for t in LINK.findall(text) if "://" not in t]
    missing = [t for t in links if not (page.parent / t).exists()]
    missing += [t for t in NAMED.findall(text) if not (ROOT / t).exists()]
    missing += [t for t in TOP_LEVEL.findall(text) if not (ROOT / t).exists()]
    assert not missing, f"{page.name} points at files not in the repository: {missing}"


def test_the_readme_stays_short_and_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    commands = re.search(r"```bash\n(.*?)```", text, re.S)
    assert commands is not None
    assert [line.split("#")[0].strip() for line in commands.group(1).strip().splitlines()] == [
        "make install && make quickstart",
        "make test",
    ]
