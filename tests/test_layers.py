"""Imports run one way (docs/design.md, "Layers"): cli -> demo -> annotate / interop / report -> loop -> active ->
engine -> modeling -> data -> structures / config / utils, and no module imports itself through others (no
import cycle, within a layer either). Every import in apis/ (at module level or inside a function) is checked."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "apis"

# Higher layers may import lower ones (and their own); never the other way. Evaluation scores results and
# sits beside modeling: the engine uses both, neither uses the other.
LAYERS = {
    "cli": 9,
    "demo": 8,
    "annotate": 7, "interop": 7, "report": 7,
    "loop": 6,
    "active": 5,
    "engine": 4,
    "modeling": 3, "evaluation": 3,
    "data": 2,
    "structures": 1, "config": 1, "config_loading": 1, "config_versions": 1, "config_use": 1, "utils": 1,
}


def layer_of(module: str) -> str:
    """``apis.data.coco`` -> ``data``; ``apis`` itself -> ``apis``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "apis"


def module_name(path: Path, root: Path) -> str:
    """Dotted name of ``path`` in the package at ``root`` (a folder named ``apis``)."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path, names: bool = False) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``apis`` import in the file, relative imports resolved; with ``names``, each
    name a ``from`` import takes too (``apis.data.coco`` for ``from apis.data import coco``)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            if names:
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name == "apis" or name.startswith("apis.")]


def upward_imports(root: Path) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        here = layer_of(module_name(path, root))
        for line, target in imported_modules(path, root):
            there = layer_of(target)
            if there == "apis" or here == "apis":
                continue  # the package's __init__ (version) is below everything and imports nothing
            if there not in LAYERS or here not in LAYERS:
                problems.append(f"{path.relative_to(root.parent)}:{line}: {target} is in no layer (add it to LAYERS)")
            elif LAYERS[there] > LAYERS[here] or (LAYERS[there] == LAYERS[here] and there != here
                                                   and LAYERS[here] > 1):
                problems.append(f"{path.relative_to(root.parent)}:{line}: {here} imports {target}")
    return problems


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (a name that is no module counts as its module; a package's
    ``__init__`` counts as the package, which its own modules do not import by being in it)."""
    modules = {module_name(path, root): path for path in root.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for _, target in imported_modules(path, root, names=True):
            while target not in modules:
                target = target.rpartition(".")[0]
            if target != name and not name.startswith(target + "."):
                targets.add(target)
        graph[name] = targets
    return graph


def import_cycles(root: Path) -> list[list[str]]:
    """Every import cycle of the package at ``root``, as the sorted modules of each strongly connected set."""
    graph, index, low, stack, cycles = import_graph(root), {}, {}, [], []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = stack[stack.index(module):]
            del stack[stack.index(module):]
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_every_module_has_a_layer():
    names = {layer_of(module_name(path, PACKAGE)) for path in PACKAGE.rglob("*.py")} - {"apis"}
    assert names <= LAYERS.keys(), sorted(names - LAYERS.keys())


def test_no_layer_imports_a_higher_one():
    assert upward_imports(PACKAGE) == []


@pytest.mark.parametrize("source, problem", [
    ("from apis.loop.oracle import Oracle\n", "data imports apis.loop.oracle"),
    ("def f():\n    from apis.engine import trainer\n", "data imports apis.engine"),
    ("import apis.modeling.condinst\n", "data imports apis.modeling.condinst"),
    ("from ..evaluation import coco_eval\n", "data imports apis.evaluation"),
])
def test_an_upward_import_is_reported(tmp_path, source, problem):
    """The check itself: a data module importing upwards, at module level, in a function or relatively."""
    (tmp_path / "apis" / "data").mkdir(parents=True)
    (tmp_path / "apis" / "data" / "bad.py").write_text(source)
    (tmp_path / "apis" / "data" / "good.py").write_text("from apis.utils.io import atomic_write_json\n")
    assert [p.split(": ", 1)[1] for p in upward_imports(tmp_path / "apis")] == [problem]


def test_no_import_cycle():
    assert import_cycles(PACKAGE) == []


def test_an_import_cycle_is_reported(tmp_path):
    """The check itself: two modules of one layer importing each other, one of them inside a function, and a third
    importing them both (in no cycle)."""
    (tmp_path / "apis" / "loop").mkdir(parents=True)
    (tmp_path / "apis" / "loop" / "__init__.py").write_text("")
    (tmp_path / "apis" / "loop" / "run.py").write_text("from apis.loop import afis\n")
    (tmp_path / "apis" / "loop" / "afis.py").write_text("def f():\n    from .run import ActiveLearningRun\n")
    (tmp_path / "apis" / "loop" / "cli.py").write_text("from apis.loop.run import x\nfrom apis.loop import afis\n")
    assert import_cycles(tmp_path / "apis") == [["apis.loop.afis", "apis.loop.run"]]
    (tmp_path / "apis" / "loop" / "afis.py").write_text("def f():\n    return 1\n")
    assert import_cycles(tmp_path / "apis") == []


def test_only_data_stores():
    """The ledger, its questions, leases and answers are stored by apis/data/ alone: no other layer opens SQLite
    or reaches into a ledger's connection."""
    found = [f"{path.relative_to(PACKAGE.parent)}: {word}" for path in sorted(PACKAGE.rglob("*.py"))
             if layer_of(module_name(path, PACKAGE)) != "data"
             for word in ("sqlite3", "_conn", ".execute(") if word in path.read_text()]
    assert found == []
