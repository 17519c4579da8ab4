"""protoseg's parts import downward only: the layers below are the architecture."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "protoseg"

#: protoseg's parts from the bottom up. A part imports only parts of lower layers (and its
#: own modules): readers and metrics know nothing of networks, networks nothing of metrics
#: or data modules, a LightningModule nothing of a LightningDataModule, and none of them the
#: command line. A part not listed here is an application on top (e.g. ``protoseg.cli``).
LAYERS: list[set[str]] = [
    {"io", "memory", "precision", "distributed", "visualize"},
    {"data"},
    {"metrics", "modules"},
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


def datamodule_changes(source: str) -> list[str]:
    """Statements of ``source`` that change a datamodule or something reached through one:
    an assignment (or ``setattr``) to an attribute or item of an expression that names
    ``datamodule``, or of a name bound to an attribute or ``getattr`` of one."""
    tree = ast.parse(source)
    through = set()  # local names bound to an object reached through a datamodule

    def is_reference(value: ast.expr) -> bool:  # an attribute or getattr, not a copy
        getattr_call = (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id == "getattr"
        )
        return isinstance(value, ast.Attribute) or getattr_call

    for node in ast.walk(tree):
        binding = isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr)) and node.value
        if binding and is_reference(node.value) and "datamodule" in ast.unparse(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            through.update(t.id for t in targets if isinstance(t, ast.Name))

    def reaches_datamodule(expression: ast.expr) -> bool:
        text = ast.unparse(expression)
        root = expression
        while isinstance(root, (ast.Attribute, ast.Subscript, ast.Call)):
            root = root.func if isinstance(root, ast.Call) else root.value
        return "datamodule" in text or (isinstance(root, ast.Name) and root.id in through)

    changes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"setattr", "delattr"}
            and node.args
        ):
            targets = [ast.Attribute(value=node.args[0], attr="?", ctx=ast.Store())]
        else:
            continue
        for target in targets:
            if isinstance(target, (ast.Attribute, ast.Subscript)) and reaches_datamodule(
                target.value
            ):
                changes.append(f"line {node.lineno}: {ast.unparse(node).splitlines()[0]}")
    return changes


def test_datamodule_changes_are_found() -> None:
    """The check below finds the centre detector's former write into its datamodule's crops
    (protoseg up to e596ce4), directly or through a name, and passes reads."""
    former = (
        "def on_fit_start(self):\n"
        "    dataset = getattr(self.trainer.datamodule, 'train_dataset', None)\n"
        "    dataset.crop_targets = self.crop_targets\n"
        "    self.trainer.datamodule.batch_size = 4\n"
        "    setattr(self.trainer.datamodule, 'seed', 1)\n"
    )
    assert [c.split(":")[0] for c in datamodule_changes(former)] == ["line 3", "line 4", "line 5"]
    reads = (
        "def setup(self, stage):\n"
        "    datamodule = getattr(self.trainer, 'datamodule', None)\n"
        "    size = getattr(datamodule, 'hparams', {}).get('batch_size')\n"
        "    self.size = size\n"
    )
    assert datamodule_changes(reads) == []


def test_no_lightning_module_or_part_changes_its_datamodule() -> None:
    """A LightningModule (and the parts and callbacks it runs with) reads its datamodule and
    never changes it: what it needs of the data pipeline it declares, and the datamodule asks
    (docs/architecture.md)."""
    found = []
    for part in ("lightning_modules", "postprocess", "modules", "callbacks"):
        for path in sorted((PACKAGE / part).rglob("*.py")):
            found += [
                f"{path.relative_to(PACKAGE.parent)} {c}"
                for c in datamodule_changes(path.read_text())
            ]
    assert not found, "changes a datamodule:\n" + "\n".join(found)
