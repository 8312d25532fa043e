"""The package's modules import each other without a cycle.

Every ``import flowtrail...`` and ``from flowtrail... import`` counts, wherever it is:
at module level, inside a function (a deferred import that dodges a cycle is still a
cycle) or under ``TYPE_CHECKING``. A package's ``__init__`` is its own node. Importing
``flowtrail.a.b`` also imports the package ``flowtrail.a``, except where that package is
one the importing module sits in (it is already being imported by then). ``from
flowtrail.a import b`` names the module ``flowtrail.a.b`` when there is one, else the
package ``flowtrail.a`` (a name its ``__init__`` defines): so a submodule that takes a
name from ``flowtrail`` itself closes a cycle through the package's ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

SOURCE = ROOT / "src"
PACKAGE = "flowtrail"


def all_modules(source: Path = SOURCE, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package by name (``flowtrail.handlers`` for its
    ``__init__.py``)."""
    found = {}
    for path in sorted((source / package).rglob("*.py")):
        parts = list(path.relative_to(source).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported_modules(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The modules of the package one module imports by name, at any depth."""
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
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
            for alias in node.names:
                module = f"{target}.{alias.name}"
                found.add(module if module in modules else target)
    return {n for n in found if n in modules}


def import_graph(source: Path = SOURCE, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules that importing it runs."""
    modules = all_modules(source, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        parts = name.split(".")
        own_packages = {".".join(parts[:i]) for i in range(1, len(parts))}
        if path.name == "__init__.py":
            own_packages.add(name)
        edges: set[str] = set()
        for target in imported_modules(path, name, modules):
            edges.add(target)
            # The packages above it are imported first, unless this module is in them.
            pieces = target.split(".")
            for i in range(1, len(pieces)):
                above = ".".join(pieces[:i])
                if above not in own_packages:
                    edges.add(above)
        edges.discard(name)
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


def test_the_rules_on_a_small_package(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from pkg.a import A\nfrom pkg.sub.c import C\n",
        "a.py": "from pkg import b\nA = 1\n",  # a module of the package: no cycle
        "b.py": "def f():\n    import pkg.sub.c\n",  # deferred, and implies pkg.sub
        "sub/__init__.py": "",
        "sub/c.py": "from pkg.sub import d\nC = 1\n",
        "sub/d.py": "",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph == {
        "pkg": {"pkg.a", "pkg.sub", "pkg.sub.c"},
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.sub", "pkg.sub.c"},
        "pkg.sub": set(),
        "pkg.sub.c": {"pkg.sub.d"},
        "pkg.sub.d": set(),
    }
    assert find_cycle(graph) is None
    (package / "sub" / "d.py").write_text("from pkg import A\n")  # a name of __init__
    cycle = find_cycle(import_graph(tmp_path, "pkg"))
    assert cycle == ["pkg", "pkg.a", "pkg.b", "pkg.sub.c", "pkg.sub.d", "pkg"]


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
    front |= {"flowtrail.fronts"}
    # Engine integrations sit above the front: they open spans and make traces.
    front |= {name for name in graph if name.startswith("flowtrail.integrations")}
    lower = [name for name in graph if name not in front and name != "flowtrail.__main__"]
    wrong = {name: sorted(graph[name] & front) for name in lower if graph[name] & front}
    assert wrong == {}


def test_no_submodule_takes_names_from_the_package() -> None:
    """``from flowtrail import pipeline`` in a submodule runs the package's
    ``__init__`` (which imports the front) from below it: write ``import
    flowtrail.pipeline as pipeline`` or ``from flowtrail.pipeline import ...``."""
    import ast

    offenders = []
    for path in sorted((ROOT / "src" / "flowtrail").rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py") and path.parent.name == "flowtrail":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == PACKAGE and not node.level:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
