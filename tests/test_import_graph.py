"""The package's module import graph has no cycle (issue 10).

The graph is read statically with ``ast``, so it sees every import at any depth: an import inside
a function is still a dependency (it runs the first time that function does). Imports under
``if TYPE_CHECKING:`` are left out: they never run, so they cannot form a cycle at import time
(the convention of import-linter's ``exclude_type_checking_imports`` and of transformers'
``generation`` <-> ``modeling_utils``). Self-contained on purpose: no helper outside the repo.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import node, at any depth, except the bodies of ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch does run
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """``module -> modules of the same package it imports`` for the package directory ``root``.

    A package's ``__init__`` importing its own submodules is an edge too: importing the package
    runs those imports, so ``a -> pkg -> pkg.child -> a`` is a cycle (``../shared/tools/
    import_cycles.py`` drops these edges and so misses it). Only a cycle made of a package and
    its own submodules alone is let pass, see :func:`cycles`.
    """
    package = root.name
    files: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = path

    def owner(dotted: str) -> str | None:
        # "pkg.mod.Name" -> "pkg.mod": the longest prefix that is a module of the package
        while dotted and dotted not in files:
            dotted = dotted.rpartition(".")[0]
        return dotted if dotted.split(".")[0] == package else None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets: set[str | None] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets |= {owner(alias.name) for alias in node.names}
                continue
            if node.level:
                here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                prefix = ".".join(here + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets.add(owner(prefix))
            targets |= {owner(f"{prefix}.{alias.name}") for alias in node.names}
        graph[module] = {t for t in targets if t and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative).

    A component made only of a package and its own submodules (``pkg`` <-> ``pkg.child``
    through the package's re-exports) is not reported.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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

    def only_parent_child(component: list[str]) -> bool:
        return all(
            any(o != m and (o.startswith(m + ".") or m.startswith(o + ".")) for o in component)
            for m in component
        )

    return [c for c in found if not only_parent_child(c)]


def _package_dir() -> Path:
    spec = importlib.util.find_spec("multistream")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def test_multistream_has_no_import_cycle():
    graph = import_graph(_package_dir())
    assert "multistream.model" in graph and "multistream.training.trainer" in graph  # the walk saw the tree
    found = cycles(graph)
    assert not found, "import cycles: " + " | ".join(" <-> ".join(c) for c in found)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_a_lazy_import_still_closes_a_cycle(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from .b import thing\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": "def f():\n    from ..a import thing\n    return thing\n",
            "pkg/b.py": "def g():\n    if True:\n        from pkg.sub import c\n    return c\nthing = 1\n",
        },
    )
    graph = import_graph(pkg)
    assert graph["pkg.sub.c"] == {"pkg.a"} and graph["pkg.b"] == {"pkg.sub", "pkg.sub.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]


def test_type_only_imports_and_package_reexports_are_no_cycle(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "from .a import A\n",
            "pkg/a.py": "from typing import TYPE_CHECKING\nimport pkg\nif TYPE_CHECKING:\n"
            "    from .b import B\nelse:\n    B = None\nA = 1\n",
            "pkg/b.py": "from .a import A\n",
        },
    )
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg"}  # the type-only import of b is not an edge
    assert cycles(graph) == []  # pkg <-> pkg.a is a package re-exporting its child


def test_a_cycle_through_a_package_reexport_is_found(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/model.py": "def generate():\n    from .engine import run\n    return run\n",
            "pkg/engine/__init__.py": "from .session import run\n",
            "pkg/engine/session.py": "def run():\n    from ..model import generate\n    return generate\n",
        },
    )
    assert cycles(import_graph(pkg)) == [["pkg.engine", "pkg.engine.session", "pkg.model"]]
