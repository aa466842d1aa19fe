"""The package's import graph: no cycles (top-level or inside functions), and the layers stay apart.

Every ``import`` statement of the core (``covidlesionseg``) and the Slicer glue (``COVIDLesionSegLib``) is
read from the source with ``ast`` (nothing is imported), function bodies included, since a lazy import
still ties two modules together.  An import of a parent package that Python performs implicitly is not an
edge; an explicit ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "COVIDLesionSeg"
PACKAGES = ("covidlesionseg", "COVIDLesionSegLib")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((MODULE_DIR / package).rglob("*.py")):
            parts = list(path.relative_to(MODULE_DIR).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != name:
                    graph[name].add(resolved)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_is_read(graph: dict[str, set[str]]) -> None:
    # the reader sees top-level, aliased and function-level imports
    assert "covidlesionseg.progress" in graph["covidlesionseg.cli"]
    assert "covidlesionseg.weights" in graph["covidlesionseg.engines.unet"]
    assert "covidlesionseg.engines.factory" in graph["covidlesionseg.cli"]  # imported inside cmd_segment


def test_cycle_finder_finds_a_planted_cycle() -> None:
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(planted) == [["a", "b", "c"]]


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_progress_is_the_bottom(graph: dict[str, set[str]]) -> None:
    assert graph["covidlesionseg.progress"] == set()


def test_registry_and_engines_stay_apart(graph: dict[str, set[str]]) -> None:
    registry = "covidlesionseg.models"
    assert not any(m.startswith("covidlesionseg.engines") for m in reachable(graph, registry))
    assert "covidlesionseg.weights" in graph[registry]
    for module in graph:
        if module.startswith("covidlesionseg.engines") and module != "covidlesionseg.engines.factory":
            assert registry not in reachable(graph, module), f"{module} reaches the model registry"
    assert registry not in reachable(graph, "covidlesionseg.weights")


def test_imports_are_absolute() -> None:
    relative = [f"{path.relative_to(MODULE_DIR)}:{node.lineno}" for path in _modules().values()
                for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if isinstance(node, ast.ImportFrom) and node.level]
    assert relative == []


def test_the_core_never_imports_the_slicer_side(graph: dict[str, set[str]]) -> None:
    for module, targets in graph.items():
        if module.startswith("covidlesionseg"):
            assert not any(t.startswith("COVIDLesionSegLib") for t in targets), module
