"""The package's import graph, read from the source with ``ast``: no cycles, the CLI and Ray/Optuna stay at the edge.

Every import counts, at any depth of a file (imports inside functions hide cycles from Python but not from this
test), except those under ``if TYPE_CHECKING:``. ``import prunenas.X`` is an edge to ``prunenas.X``;
``from prunenas.X import N`` to ``prunenas.X`` and, when ``prunenas.X.N`` is a module, to it too; relative imports
resolve against the importing module's package; an ``__init__.py`` is its package's module.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prunenas"

# Imports that may sit inside a function: optional, heavy, needed by one command only (each says why in a comment).
LAZY_ALLOWED = {"onnx", "onnxruntime", "matplotlib", "thop", "scipy", "timm"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class ImportCollector(ast.NodeVisitor):
    """Collects (imported name, node, inside a function) for every import outside ``if TYPE_CHECKING:``."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.depth = 0
        self.found: list[tuple[str, ast.stmt, bool]] = []

    def visit_If(self, node: ast.If) -> None:
        for child in (node.orelse if is_type_checking(node) else [*node.body, *node.orelse]):
            self.visit(child)
        if not is_type_checking(node):
            self.visit(node.test)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        self.found.extend((alias.name, node, self.depth > 0) for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")[:len(self.package.split(".")) - node.level + 1]
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module
        self.found.append((module, node, self.depth > 0))
        self.found.extend((f"{module}.{alias.name}", node, self.depth > 0) for alias in node.names)


def imports_of(name: str, path: Path) -> list[tuple[str, ast.stmt, bool]]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    collector = ImportCollector(package)
    collector.visit(ast.parse(path.read_text(), str(path)))
    return collector.found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: {target for target, _, _ in imports_of(name, path) if target in modules and target != name}
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first repeated at the end), or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return [*path[path.index(child):], child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph[child])))
    return None


def test_find_cycle_finds_a_cycle_and_accepts_a_dag():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_collector_sees_function_level_and_relative_imports_but_not_type_checking():
    source = ("from typing import TYPE_CHECKING\nfrom .b import c\nif TYPE_CHECKING:\n    import prunenas.x\n"
              "def f():\n    from prunenas.y import z\n")
    collector = ImportCollector("prunenas.pkg")
    collector.visit(ast.parse(source))
    assert [(name, lazy) for name, _, lazy in collector.found] == [
        ("typing", False), ("typing.TYPE_CHECKING", False), ("prunenas.pkg.b", False), ("prunenas.pkg.b.c", False),
        ("prunenas.y", True), ("prunenas.y.z", True)]


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


# `python -m prunenas` (prunenas/__main__.py) is the command line's second door.
@pytest.mark.parametrize(("inside", "forbidden"), [(("prunenas.cli", "prunenas.__main__"), ("prunenas.cli",)),
                                                   (("prunenas.search",), ("ray", "optuna"))])
def test_only_one_package_imports(inside, forbidden):
    offenders = sorted(f"{name}: {target}" for name, path in package_modules().items()
                       if not any(name == i or name.startswith(i + ".") for i in inside)
                       for target, _, _ in imports_of(name, path)
                       if target.split(".")[0] in forbidden or target.startswith(forbidden))
    assert offenders == []


def test_function_level_imports_are_only_optional_heavy_dependencies_with_a_reason():
    offenders = []
    for name, path in package_modules().items():
        lines = path.read_text().splitlines()
        for target, node, lazy in imports_of(name, path):
            if not lazy:
                continue
            reason = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
            if target.split(".")[0] not in LAZY_ALLOWED or not reason:
                offenders.append(f"{name}:{node.lineno} {target}")
    assert sorted(set(offenders)) == []
