"""The memory left to a process: the kernel's MemAvailable, lowered by a cgroup's limit."""

from __future__ import annotations

from pathlib import Path

from protoseg.memory import available_memory

MEMINFO = "MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n"


def files(tmp_path: Path, limit: str, usage: str) -> tuple[tuple[Path, Path], ...]:
    (tmp_path / "limit").write_text(limit + "\n")
    (tmp_path / "usage").write_text(usage + "\n")
    return (
        (tmp_path / "missing_v2", tmp_path / "missing_v2"),
        (tmp_path / "limit", tmp_path / "usage"),
    )


def test_meminfo_alone(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text(MEMINFO)
    assert available_memory(tmp_path / "meminfo", ()) == 20000000 * 1024
    assert available_memory(tmp_path / "absent", ()) is None


def test_a_cgroup_limit_below_the_machine_wins(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text(MEMINFO)
    gib = 1 << 30
    pairs = files(tmp_path, str(8 * gib), str(3 * gib))
    assert available_memory(tmp_path / "meminfo", pairs) == 5 * gib
    assert available_memory(tmp_path / "absent", pairs) == 5 * gib
    over = files(tmp_path, str(8 * gib), str(9 * gib))
    assert available_memory(tmp_path / "meminfo", over) == 0
    # a limit above what the machine has left changes nothing
    loose = files(tmp_path, str(64 * gib), str(gib))
    assert available_memory(tmp_path / "meminfo", loose) == 20000000 * 1024


def test_no_limit(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text(MEMINFO)
    expected = 20000000 * 1024
    assert available_memory(tmp_path / "meminfo", files(tmp_path, "max", "123")) == expected
    v1_unlimited = str(9223372036854771712)
    assert available_memory(tmp_path / "meminfo", files(tmp_path, v1_unlimited, "1")) == expected
    assert available_memory(tmp_path / "meminfo", files(tmp_path, "garbage", "1")) == expected
