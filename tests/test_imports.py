"""The package's import structure: no cycles, no private names taken from another module,
and the layers import only downwards (docs/ARCHITECTURE.md).

Read from the source (ast), so it sees every import, those inside functions too; an import
under `if __name__ == "__main__":` counts too (a command that imports back up is a circle as well).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("legacy_compat", "data_prep", "reproduce")
# Which packages each may import (the layers, lowest first).
ALLOWED = {"legacy_compat": {"legacy_compat"},
           "data_prep": {"legacy_compat", "data_prep"},
           "reproduce": {"legacy_compat", "data_prep", "reproduce"}}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return found


def _target(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the package modules it imports; and every private name imported across modules."""
    edges: dict[str, set[str]] = {}
    private: list[str] = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        out: set[str] = set()
        aliases: dict[str, str] = {}
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    out.add(a.name)
                    aliases[a.asname or a.name] = a.name
                continue
            target = _target(module, path, node)
            out.add(target)
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in MODULES:
                    out.add(sub)
                    aliases[a.asname or a.name] = sub
                elif a.name.startswith("_") and target in MODULES:
                    private.append(f"{module} imports {target}.{a.name}")
        for node in ast.walk(tree):   # module._name on a package module
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and aliases.get(node.value.id) in MODULES):
                private.append(f"{module} uses {aliases[node.value.id]}.{node.attr}")
        edges[module] = {m for m in out if m in MODULES and m != module}
    return edges, private


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_walk_sees_the_package():
    edges, _ = import_graph()
    assert {"legacy_compat.matio", "data_prep.facts", "data_prep.readers", "reproduce.train"} <= set(edges)
    assert "data_prep.readers" in edges["data_prep.ilsvrc"] and "data_prep.facts" in edges["data_prep.setup"]


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    edges, _ = import_graph()
    cycle = _cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_private_name_from_another_module():
    _, private = import_graph()
    assert private == []


@pytest.mark.parametrize("package", PACKAGES)
def test_layers_import_downwards(package):
    edges, _ = import_graph()
    wrong = sorted(f"{m} -> {n}" for m, targets in edges.items() if m.split(".")[0] == package
                   for n in targets if n.split(".")[0] not in ALLOWED[package])
    assert wrong == []
