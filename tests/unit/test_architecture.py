"""The shape of bakery/ that docs/architecture.md promises, checked from the source itself.

Every `import` and `from ... import` in bakery/, at module level or inside a function, is an
edge of the import graph (a function-level import still makes the two modules depend on each
other, only later). The graph must have no cycle, and the layering rules must hold. The size
rules keep modules and functions small enough to read in one sitting.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit

PACKAGE = REPO / "bakery"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# (importer prefix, imported prefix, why it is forbidden)
FORBIDDEN = [
    ("bakery.", "bakery.cli", "the library never imports the CLI"),
    ("bakery.builders", "bakery.fleets", "builders never import fleets"),
    ("bakery.fleets", "bakery.builders", "fleets never import builders"),
    ("bakery.aws", "bakery.fleets.local", "bakery.aws never imports the local target"),
    ("bakery.aws", "bakery.fleets.haproxy", "bakery.aws never imports the local target"),
    ("bakery.aws", "bakery.podman", "bakery.aws never imports the local target"),
    ("bakery.aws", "bakery.gc.local", "bakery.aws never imports the local target"),
    ("bakery.fleets.aws", "bakery.fleets.local", "the aws fleet borrows nothing from the local one"),
    ("bakery.catalog", "bakery.", "the catalog imports no engine (only bakery.errors and its schema)"),
    ("bakery.gc.plan", "bakery.", "gc planning is pure (only the catalog's constants)"),
    ("bakery.fleets.planning", "bakery.", "refresh planning is pure (only the environment's preferences)"),
    ("bakery.disks", "bakery.verify", "disks make and boot disks; verify judges them, never the reverse"),
    ("bakery.disks", "bakery.fleets", "disks know nothing of fleets"),
    ("bakery.disks", "bakery.builders", "disks know nothing of builders"),
    ("bakery.disks", "bakery.gc", "gc removes disks' leftovers, not the reverse"),
    ("bakery.disks", "bakery.aws", "the disk and the VM are local; publishing to AWS builds on them"),
]
# What the modules with "imports nothing of bakery" rules may still import.
ALLOWED = {
    "bakery.catalog": {"bakery.errors", "bakery.catalog_schema", "bakery.catalog_disks", "bakery.catalog_packages",
                       "bakery.catalog_gc"},
    "bakery.gc.plan": {"bakery.catalog", "bakery.errors"},
    "bakery.fleets.planning": {"bakery.environments", "bakery.errors", "bakery.data_volume_rules"},  # rules only
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "templates" not in p.parts}


def imported_names(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The bakery modules one file imports: `from bakery.aws import amis` names bakery.aws.amis when that is a
    module."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return {n for n in found if n in known and n != name}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {
        name: imported_names(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known)
        for name, path in mods.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_function_level_and_relative_imports():
    """A cycle hidden in a function body (the old cli.py <-> cli_fleet.py circle) is still a cycle."""
    known = {"bakery.cli", "bakery.cli.fleet", "bakery.cli.common", "bakery.aws", "bakery.aws.amis"}
    source = ("def deploy():\n    from bakery.cli import emit_json\n\n"
              "from . import common\nfrom bakery.aws import amis, x\n")
    assert imported_names(source, "bakery.cli.fleet", False, known) == {
        "bakery.cli", "bakery.cli.common", "bakery.aws.amis", "bakery.aws"}
    graph = {"bakery.a": {"bakery.b"}, "bakery.b": {"bakery.c"}, "bakery.c": {"bakery.a"}, "bakery.d": {"bakery.a"}}
    assert cycles(graph) == [["bakery.a", "bakery.b", "bakery.c"]]
    assert cycles({"bakery.a": {"bakery.b"}, "bakery.b": set()}) == []


def test_no_import_cycle_in_bakery():
    assert cycles(import_graph()) == []


def within(name: str, prefix: str) -> bool:
    """`bakery.` covers every module; `bakery.fleets` covers the package and its modules."""
    return name.startswith(prefix) if prefix.endswith(".") else name == prefix or name.startswith(prefix + ".")


def violations(graph: dict[str, set[str]], importer: str, imported: str) -> list[str]:
    return sorted(
        f"{src} imports {dst}"
        for src, targets in graph.items()
        if within(src, importer) and not (imported != "bakery." and within(src, imported))
        for dst in targets
        if within(dst, imported) and dst not in ALLOWED.get(src, set())
    )


def test_layering_rules_catch_a_wrong_import():
    graph = {"bakery.fleets.local": {"bakery.builders.podman"}, "bakery.cli.fleet": {"bakery.cli.common"},
             "bakery.catalog": {"bakery.errors", "bakery.podman"}}
    assert violations(graph, "bakery.fleets", "bakery.builders") == [
        "bakery.fleets.local imports bakery.builders.podman"]
    assert violations(graph, "bakery.", "bakery.cli") == []
    assert violations(graph, "bakery.catalog", "bakery.") == ["bakery.catalog imports bakery.podman"]


@pytest.mark.parametrize(("importer", "imported", "why"), FORBIDDEN, ids=[f"{a}->{b}" for a, b, _ in FORBIDDEN])
def test_layering(importer, imported, why):
    wrong = violations(import_graph(), importer, imported)
    assert wrong == [], f"{why}: " + "; ".join(wrong)


def test_modules_and_functions_stay_small():
    too_long = []
    for name, path in modules().items():
        source = path.read_text(encoding="utf-8")
        lines = source.count("\n")
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{name}: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name} (line {node.lineno}): {length} lines "
                                    f"(at most {MAX_FUNCTION_LINES})")
    assert too_long == []
