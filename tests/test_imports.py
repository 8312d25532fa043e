"""The package's modules import each other without a cycle.

Every ``import flowtrail...`` and ``from flowtrail... import`` counts, wherever it is:
at module level, inside a function (a deferred import that dodges a cycle is still a
cycle) or under ``TYPE_CHECKING``. A package's ``__init__`` is its own node. Importing
``flowtrail.a.b`` also imports the package ``flowtrail.a``, except where that package is
one the importing module sits in (it is already being imported by then).
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

SOURCE = ROOT / "src"
PACKAGE = "flowtrail"


def module_name(path: Path) -> str:
    """``flowtrail.handlers`` for ``.../flowtrail/handlers/__init__.py``."""
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    """Every module of the package by name."""
    return {module_name(path): path for path in sorted((SOURCE / PACKAGE).rglob("*.py"))}


def imported_names(path: Path, name: str, is_package: bool) -> set[str]:
    """The flowtrail modules one module names in any import statement, at any depth."""
    here = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from flowtrail.formats import line`` imports the module ``line`` too.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {n for n in found if n == PACKAGE or n.startswith(PACKAGE + ".")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the flowtrail modules importing it runs."""
    modules = all_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        own_packages = {name.rsplit(".", i)[0] for i in range(name.count(".") + 1)}
        if not is_package:
            own_packages.discard(name)
        edges: set[str] = set()
        for target in imported_names(path, name, is_package):
            parts = target.split(".")
            # The named module and every package above it, as far as they are modules.
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                implicit = i < len(parts)
                if candidate not in modules or candidate == name:
                    continue
                if implicit and candidate in own_packages:
                    continue  # a package this module is in: already importing
                edges.add(candidate)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first repeated last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    # module level, a package, and a module inside a package
    assert "flowtrail.handlers.base" in graph["flowtrail.handlers.file"]
    assert "flowtrail.handlers" in graph["flowtrail.stores"]
    # deferred inside a function (cli imports its formatters lazily)
    assert "flowtrail.formats.tree" in graph["flowtrail.cli"]
    # the package imports its submodules
    assert "flowtrail.trace" in graph["flowtrail"]


def test_find_cycle_finds_a_deferred_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_submodule_imports_the_package() -> None:
    graph = import_graph()
    importers = sorted(name for name, edges in graph.items() if PACKAGE in edges)
    assert importers == [], f"these modules import the package {PACKAGE!r}: {importers}"


def test_nothing_below_the_front_imports_it() -> None:
    """The way down: front (trace, stdlib, cli) -> pipeline -> handlers -> formats ->
    records/context/config. Handlers, formats, the pipeline and the records never
    import the front."""
    graph = import_graph()
    front = {"flowtrail", "flowtrail.trace", "flowtrail.spans", "flowtrail.stdlib"}
    front |= {"flowtrail.cli", "flowtrail.demo", "flowtrail.testing", "flowtrail.stores"}
    lower = [name for name in graph if name not in front and name != "flowtrail.__main__"]
    wrong = {name: sorted(graph[name] & front) for name in lower if graph[name] & front}
    assert wrong == {}
