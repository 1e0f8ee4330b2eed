"""Imports run one way (docs/design.md, "Layers"): cli -> demo -> annotate / interop / report -> active ->
engine -> modeling -> data -> structures / config / utils. Every import in apis/ (at module level or inside a
function) is checked."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "apis"

# Higher layers may import lower ones (and their own); never the other way. Evaluation scores results and
# sits beside modeling: the engine uses both, neither uses the other.
LAYERS = {
    "cli": 8,
    "demo": 7,
    "annotate": 6, "interop": 6, "report": 6,
    "active": 5,
    "engine": 4,
    "modeling": 3, "evaluation": 3,
    "data": 2,
    "structures": 1, "config": 1, "config_versions": 1, "utils": 1,
}


def layer_of(module: str) -> str:
    """``apis.data.coco`` -> ``data``; ``apis`` itself -> ``apis``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "apis"


def module_name(path: Path, root: Path) -> str:
    """Dotted name of ``path`` in the package at ``root`` (a folder named ``apis``)."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``apis`` import in the file, relative imports resolved."""
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


def test_every_module_has_a_layer():
    names = {layer_of(module_name(path, PACKAGE)) for path in PACKAGE.rglob("*.py")} - {"apis"}
    assert names <= LAYERS.keys(), sorted(names - LAYERS.keys())


def test_no_layer_imports_a_higher_one():
    assert upward_imports(PACKAGE) == []


@pytest.mark.parametrize("source, problem", [
    ("from apis.active.oracle import Oracle\n", "data imports apis.active.oracle"),
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
