"""The package's imports run one way: no module reaches itself again through what it imports,
counting the imports made inside functions (which may only defer a cost, never hide a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import deviceid_inject

PACKAGE = Path(deviceid_inject.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere in it, at the top or in a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found.update(f"{target}.{alias.name}" for alias in node.names)
            found.add(target)
    return found & modules


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: imported(name, path, modules) - {name} for name, path in paths.items()}


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path of imports from `start` back to itself, or None."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        module, path = stack.pop()
        for target in graph[module]:
            if target == start:
                return [*path, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


def test_the_graph_sees_the_imports_made_inside_functions() -> None:
    graph = import_graph()
    assert "deviceid_inject.bridge.main" in graph["deviceid_inject.cli"]  # imported in a function
    assert "deviceid_inject.exitcodes" in graph["deviceid_inject.bridge.main"]


def test_no_module_imports_itself_back() -> None:
    graph = import_graph()
    assert len(graph) > 20
    cycles = [cycle for name in sorted(graph) if (cycle := cycle_through(graph, name))]
    assert cycles == []


def test_the_bridge_imports_nothing_from_the_cni_protocol() -> None:
    graph = import_graph()
    bridge = {name: targets for name, targets in graph.items() if name.startswith("deviceid_inject.bridge")}
    assert bridge
    assert {name for name, targets in bridge.items() if "deviceid_inject.protocol" in targets} == set()
