"""protoseg's parts import downward only: the layers below are the architecture."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "protoseg"

#: protoseg's parts from the bottom up. A part imports only parts of lower layers (and its
#: own modules): readers and metrics know nothing of networks, networks nothing of data
#: modules, a LightningModule nothing of a LightningDataModule, and none of them the
#: command line. A part not listed here is an application on top (e.g. ``protoseg.cli``).
LAYERS: list[set[str]] = [
    {"io", "memory", "precision", "distributed", "visualize"},
    {"metrics", "data"},
    {"modules"},
    {"postprocess"},
    {"datamodules", "lightning_modules"},
    {"callbacks"},
]
LEVEL = {part: level for level, parts in enumerate(LAYERS) for part in parts}
TOP = len(LAYERS)


def part_of(module: str) -> str:
    """``protoseg.modules.centres`` -> ``modules``; ``protoseg.cli`` -> ``cli``."""
    return module.split(".")[1]


def protoseg_imports(path: Path) -> set[str]:
    """Every protoseg module a file imports, at the top, in functions or for type checking."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.startswith("protoseg."))
    return found


def test_every_import_goes_down() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if module.count(".") == 0:  # protoseg/__init__.py
            continue
        own = part_of(module)
        for imported in sorted(protoseg_imports(path)):
            other = part_of(imported)
            if other == own or (other not in LEVEL and own not in LEVEL):
                continue  # within a part, or between applications on top
            if LEVEL.get(other, TOP) >= LEVEL.get(own, TOP):
                upward.append(f"{module} imports {imported}")
    assert not upward, "imports sideways or up the layers:\n" + "\n".join(upward)


def test_the_layers_name_every_package() -> None:
    """A new folder of protoseg gets its place in LAYERS."""
    folders = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert folders <= LEVEL.keys(), f"not placed in LAYERS: {sorted(folders - LEVEL.keys())}"


def test_no_module_imports_one_that_imports_it_back() -> None:
    """No cycle among protoseg's modules, not even through type-checking imports."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[module] = protoseg_imports(path)
    cycles = []
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            cycles.append(" -> ".join([*trail[trail.index(module) :], module]))
            return
        if module in done or module not in graph:
            return
        for imported in sorted(graph[module] - {module}):  # a package's lazy own imports
            visit(imported, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
