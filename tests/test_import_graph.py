"""The protocol package has no import cycle: every module imports only modules below it, at the top of the
file and without ``TYPE_CHECKING`` or late imports (a cycle hidden that way breaks when imports move)."""

from __future__ import annotations

import ast
from pathlib import Path

PROTOCOL = Path(__file__).resolve().parent.parent / "protocol"


def imports_of(path: Path) -> set[str]:
    """Every ``protocol.*`` module ``path`` imports, wherever in the file the import is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("protocol."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("protocol."))
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of ``graph`` found by a depth-first search from every node (each reported once or more)."""
    found: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for dep in sorted(graph.get(node, ())):
            if dep in path:
                found.append(path[path.index(dep):] + [dep])
            elif len(path) <= len(graph):
                visit(dep, path + [dep])

    for start in sorted(graph):
        visit(start, [start])
    return found


def test_the_protocol_package_has_no_import_cycle() -> None:
    graph = {f"protocol.{p.stem}": imports_of(p) for p in PROTOCOL.glob("*.py")}
    assert {"protocol.codec", "protocol.limits", "protocol.values", "protocol.validation"} <= graph.keys()
    assert graph["protocol.limits"] == {"protocol.errors"}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})[0] == ["a", "b", "c", "a"]
