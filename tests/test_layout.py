"""The package's layout: the import graph between its modules has no cycles (docs: README, "The pieces")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "broadcaster"


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, those inside functions included (a late import is
    still an arrow), but those under `if TYPE_CHECKING:` (never run)."""
    typing_only = {id(node) for block in ast.walk(tree)
                   if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
                   for node in ast.walk(block)}  # fmt: skip
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in typing_only]  # fmt: skip


def module_imports() -> dict[str, set[str]]:
    """Each module of the package, and the package modules it imports, anywhere in it."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("broadcaster"):
                assert node.module is not None
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                          for a in node.names}  # fmt: skip
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("broadcaster")}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_import_cycles() -> None:
    """No module of the package imports, through others, a module that imports it, not even
    from inside a function (issue 29, part 3)."""
    graph = module_imports()
    assert len(graph) > 40
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        for child in sorted(graph[name]):
            if child in path:
                cycles.append([*path[path.index(child) :], child])
            elif child not in done:
                visit(child, [*path, child])
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert cycles == []
