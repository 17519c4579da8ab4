"""How much memory this process may still take: the machine's, or its job's if less.

A SLURM job or a container is held to a cgroup limit below the node's memory; a process that
crosses it is killed without a Python error. Stages that hold data in memory ask here first.
"""

from __future__ import annotations

from pathlib import Path

# cgroup v2 (one hierarchy), then v1's memory controller: (limit, usage) files.
CGROUP_FILES = (
    (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
    (
        Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        Path("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ),
)
MEMINFO = Path("/proc/meminfo")


def available_memory(
    meminfo: Path = MEMINFO,
    cgroup_files: tuple[tuple[Path, Path], ...] = CGROUP_FILES,
) -> int | None:
    """Bytes this process may still allocate: the kernel's ``MemAvailable``, lowered to what
    its cgroup's limit leaves; None where neither can be read (not Linux).

    Args:
        meminfo: the ``/proc/meminfo`` to read.
        cgroup_files: (limit, usage) file pairs, the first readable pair is used.
    """
    figures = [_meminfo_available(meminfo), _cgroup_left(cgroup_files)]
    known = [value for value in figures if value is not None]
    return min(known) if known else None


def _meminfo_available(path: Path) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_left(pairs: tuple[tuple[Path, Path], ...]) -> int | None:
    for limit_file, usage_file in pairs:
        try:
            limit_text = limit_file.read_text().strip()
            if limit_text == "max":  # v2: no limit
                return None
            limit = int(limit_text)
            usage = int(usage_file.read_text().strip())
        except (OSError, ValueError):
            continue
        # v1 reports "no limit" as a huge page-rounded number.
        if limit >= 1 << 60:
            return None
        return max(limit - usage, 0)
    return None
