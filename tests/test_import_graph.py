"""The package's imports form no cycle, counting the imports inside functions (issue 25).

An import inside a function defers a module's loading (the config check loads no torch), but it is still
a dependency: a cycle through one means two modules that cannot be read, tested or moved one without the
other. Only `if TYPE_CHECKING:` blocks are left out, since they never run. Each edge goes to the module
an import names, or to the package when it names a package's attribute (`from sapt.data import Task`).
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sapt"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(source: str, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package's modules that module `name` (its source text) imports anywhere, except under
    `if TYPE_CHECKING:`."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def known(target: str) -> str | None:
        while target not in modules and "." in target:
            target = target.rpartition(".")[0]
        return target if target in modules else None

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for other in child.orelse:
                    visit_one(other)
            else:
                visit_one(child)

    def visit_one(node: ast.AST) -> None:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package, one level up per extra dot
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            module = known(target) if target.split(".")[0] == "sapt" else None
            if module is not None and module != name:
                found.add(module)
        visit(node)

    visit(ast.parse(source))
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", set(files))
            for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
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
    return found


def test_the_checker_finds_a_cycle_through_an_import_inside_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sapt import config\n" \
             "def f():\n    from sapt.data import Task\n    from . import io\n"
    modules = {"sapt", "sapt.config", "sapt.data", "sapt.io", "sapt.probe"}
    # the function's imports count (the relative one too), the TYPE_CHECKING one does not
    assert imported_modules(source, "sapt.probe", False, modules) == {"sapt.data", "sapt.io"}


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "sapt.train" in graph and "sapt.unseen" in graph["sapt.train"]  # the graph is really read
    assert cycles(graph) == []
