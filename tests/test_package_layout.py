"""The package tree is layered: no two packages import each other, even through others, and each package's
``__init__`` says truly which of the others it imports."""

from __future__ import annotations

import ast
import re
from graphlib import CycleError, TopologicalSorter

from tests.helpers.workplace import REPO_ROOT

PACKAGE = REPO_ROOT / "gem_lightning"
EVERYWHERE = {"errors"}  # one exception type every layer raises; never named in the docstrings


def _top(module: str) -> str:
    """``gem_lightning.data.splits`` -> ``data``; ``gem_lightning.errors`` -> ``errors``."""
    return module.split(".")[1]


def _imports() -> dict[str, set[str]]:
    """For each top-level package or module of gem_lightning, the others it imports (anywhere in its files)."""
    graph: dict[str, set[str]] = {}
    for file in PACKAGE.rglob("*.py"):
        parts = file.relative_to(REPO_ROOT).with_suffix("").parts
        if len(parts) < 2 or parts[1] == "__init__":
            continue
        own = parts[1]
        names = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found = {_top(name) for name in names if name.startswith("gem_lightning.")}
        graph.setdefault(own, set()).update(found - {own})
    return graph


def test_no_package_imports_one_that_imports_it_back():
    graph = _imports()
    assert {"data", "models", "inference", "training", "evaluation"} <= set(graph)
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as cycle:
        raise AssertionError(f"packages import each other: {' -> '.join(cycle.args[1])}") from None


def test_each_package_docstring_names_what_it_imports():
    graph = _imports()
    packages = [path.parent.name for path in sorted(PACKAGE.glob("*/__init__.py"))]
    assert len(packages) >= 12
    for name in packages:
        docstring = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
        statement = re.search(r"Imports (.*?)(;|: |\.\s*$|\.\n)", docstring, re.DOTALL)
        assert statement, f"{name}/__init__.py does not say what it imports"
        if statement.group(1).startswith("any package"):
            continue
        said = {word.split(".")[0] for word in re.findall(r"``([\w.]+)``", statement.group(1))}
        assert said - EVERYWHERE == graph.get(name, set()) - EVERYWHERE, name
