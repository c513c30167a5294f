"""The import rules the architecture hangs on, checked by reading every module's source (ast).

Imports go one way (models/data/text -> compress -> train -> export -> bench -> pipeline -> cli);
``runtime/`` ships to devices alone, so it imports only numpy, onnxruntime, the standard library
and the standard-library-only ``slimwhisper.errors``. Lazy imports inside functions count too: a
lazy import still ties one package to another.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "slimwhisper"
STDLIB = set(sys.stdlib_module_names)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """Every module imported anywhere in ``tree`` except under ``if TYPE_CHECKING``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:  # "from pkg import mod" imports the module pkg.mod
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: _imports(ast.parse(p.read_text(encoding="utf-8")), set(files)) for m, p in files.items()}


def _unit(module: str) -> str:
    """The package-level unit: slimwhisper.compress.scores -> slimwhisper.compress."""
    return ".".join(module.split(".")[:2])


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_no_import_cycle_between_packages(graph):
    units: dict[str, set[str]] = defaultdict(set)
    for mod, deps in graph.items():
        units[_unit(mod)] |= {_unit(d) for d in deps if d.startswith("slimwhisper.") and _unit(d) != _unit(mod)}
    assert _cycle(units) is None, f"package import cycle: {' -> '.join(_cycle(units))}"


def test_no_import_cycle_between_modules(graph):
    internal = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    # A package's __init__ re-exports its modules: edges into an __init__ from its own modules are
    # the only way that would cycle, and they are refused here too (import the module, not the package).
    assert _cycle(internal) is None, f"module import cycle: {' -> '.join(_cycle(internal))}"


def test_runtime_imports_only_numpy_onnxruntime_and_stdlib(graph):
    allowed_internal = {"slimwhisper.errors"}
    bad = {}
    for mod, deps in graph.items():
        if not mod.startswith("slimwhisper.runtime"):
            continue
        wrong = sorted(d for d in deps if not (d.split(".")[0] in STDLIB or d.split(".")[0] in ("numpy", "onnxruntime")
                                               or d.startswith("slimwhisper.runtime") or d in allowed_internal))
        if wrong:
            bad[mod] = wrong
    assert not bad, f"runtime must stay torch-free and self-contained: {bad}"


@pytest.mark.parametrize("module", ["slimwhisper.errors", "slimwhisper.outputs"])
def test_base_modules_import_only_the_standard_library(graph, module):
    wrong = sorted(d for d in graph[module] if d.split(".")[0] not in STDLIB and d != "slimwhisper.errors")
    assert not wrong, f"{module} is imported by the runtime and every stage; it may not import {wrong}"


FORBIDDEN = {
    "slimwhisper.bench": ("slimwhisper.compress", "slimwhisper.train", "slimwhisper.export", "slimwhisper.pipeline",
                          "slimwhisper.cli"),
    "slimwhisper.compress": ("slimwhisper.train", "slimwhisper.export", "slimwhisper.bench", "slimwhisper.pipeline",
                             "slimwhisper.cli"),
    "slimwhisper.train": ("slimwhisper.export", "slimwhisper.bench", "slimwhisper.pipeline", "slimwhisper.cli"),
    "slimwhisper.export": ("slimwhisper.compress", "slimwhisper.train", "slimwhisper.bench", "slimwhisper.pipeline",
                           "slimwhisper.cli"),
    "slimwhisper.devices": ("slimwhisper.compress", "slimwhisper.train", "slimwhisper.cli"),
    "slimwhisper.models": ("slimwhisper.compress", "slimwhisper.train", "slimwhisper.export", "slimwhisper.bench",
                           "slimwhisper.pipeline", "slimwhisper.cli"),
}  # fmt: skip


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(graph, package):
    bad = {m: sorted(d for d in deps if _unit(d) in FORBIDDEN[package])
           for m, deps in graph.items() if _unit(m) == package}  # fmt: skip
    bad = {m: d for m, d in bad.items() if d}
    assert not bad, f"{package} may not import {FORBIDDEN[package]}: {bad}"


def test_cycle_finder_finds_a_cycle():
    # The checks above pass on an empty result; make sure the finder itself can fail.
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
