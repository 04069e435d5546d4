"""The package's shape: no module of ``harness`` imports, directly or through others, one that imports it.

Read from the source with :mod:`ast`, not by importing: every ``import`` and
``from ... import`` of a ``harness`` module, at module level or inside a
function (a lazy import still runs), is an edge; an import under ``if
TYPE_CHECKING:`` is not (it never runs: annotations only).  A cycle makes a
module's behaviour depend on which of the two was imported first.

A type-only import can still hide a cycle in spirit (a module that calls
methods of objects whose class it may not import): the cycles it closes are
listed in :data:`TYPE_ONLY_CYCLES`, each with why it is only a name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import harness
from harness import paths

#: the source's shape, read with ast: the same on any kernel, and seconds under TCG (guest suites deselect host_only)
pytestmark = pytest.mark.host_only

PACKAGE = paths.REPO_ROOT / "harness"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """``name`` if it is a module of ours (the compiled ``harness._native`` is not: it imports nothing)."""
    return name if name in MODULES else None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST, module: str, type_only: bool = False) -> set[str]:
    """The harness modules ``module`` imports when it runs (``type_only``: and for annotations)."""
    found: set[str] = set()
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_only:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(m for m in (_resolve(a.name) for a in node.names) if m)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                # "from M import N": the module M.N if there is one, else a name defined in M
                target = _resolve(f"{base}.{alias.name}") or _resolve(base)
                if target:
                    found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return found


def import_graph(type_only: bool = False) -> dict[str, set[str]]:
    return {
        name: _runtime_imports(ast.parse(path.read_text(), str(path)), name, type_only)
        for name, path in MODULES.items()
    }


#: the cycles that imports under TYPE_CHECKING close, and why each is a name and not a dependency
TYPE_ONLY_CYCLES = {
    ("harness.events", "harness.uffd"): "ForkEvent.uffd is the child's Userfaultfd: events names its type and "
    "calls none of its methods (FaultHandler, which does, is harness.handler, above uffd)",
}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_no_module_of_harness_is_in_an_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and graph["harness.pte"] >= {"harness.memory", "harness.abi"}, (
        "the reader sees the package's imports"
    )
    found = cycles(graph)
    assert not found, "import cycles (each module imports the next, lazily or not): " + "; ".join(
        " -> ".join(c) for c in found
    )


def test_type_only_imports_close_no_other_cycle():
    """An import under TYPE_CHECKING that closes a cycle must be a name only, and say so in TYPE_ONLY_CYCLES."""
    found = {tuple(c) for c in cycles(import_graph(type_only=True))}
    assert found == set(TYPE_ONLY_CYCLES), (
        f"cycles closed by type-only imports: {sorted(found)}; listed: {sorted(TYPE_ONLY_CYCLES)}: "
        "import for real (and break the cycle), or list it with why it is a name only"
    )


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import(tmp_path):
    """Not a rubber stamp: two modules that import each other, one of them inside a function, are found,
    and an import under TYPE_CHECKING is not an edge."""
    lazy = ast.parse(
        "import harness.abi\n"
        "def f():\n    from harness.pte import PTE\n"
        "if TYPE_CHECKING:\n    from harness.uffd import Userfaultfd\n"
    )
    edges = _runtime_imports(lazy, "harness.memory")
    assert edges == {"harness.abi", "harness.pte"}
    assert cycles({"harness.memory": edges, "harness.pte": {"harness.memory"}, "harness.abi": set()}) == [
        ["harness.memory", "harness.pte"]
    ]


def test_the_readmes_rooms_table_names_every_module_and_package():
    """Each module of harness/ and each sub-package is a room the README's table names."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("## The rooms of the package") :]
    table = table[: table.index("\n## ")]
    root = Path(harness.__file__).parent
    rooms = [f"`harness/{p.name}`" for p in root.glob("*.py") if p.name != "__init__.py"]
    rooms += [f"`harness/{p.name}/`" for p in root.iterdir() if (p / "__init__.py").exists()]
    missing = sorted(room for room in rooms if room not in table)
    assert not missing, f"README.md's rooms table does not name {', '.join(missing)}"
