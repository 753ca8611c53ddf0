"""The import structure: `cli -> flows -> stages -> azr`, one way, and no cycle between modules.

Every import statement counts, those inside functions too (a lazy import is still an arrow); only
imports under `if TYPE_CHECKING:` are left out, as they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("cli", "flows", "stages", "azr")  # each may import only those after it


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports (a package import counts as its __init__)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)  # `from azr import rewards`
    return {t for t in targets if t in modules and t != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def _package_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph without arrows from a package's __init__ to its own submodules (re-exports), which
    Python resolves without a cycle: the submodule never needs the half-made package."""
    return {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()}


def test_layers_point_one_way():
    backwards = [f"{name} -> {target}" for name, targets in _graph().items() for target in targets
                 if LAYERS.index(target.split(".")[0]) < LAYERS.index(name.split(".")[0])]
    assert not backwards, "imports against cli -> flows -> stages -> azr:\n" + "\n".join(sorted(backwards))


def test_no_import_cycle():
    cycles = _cycles(_package_parents(_graph()))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("source", [
    "import azr.rewards\nfrom azr import pipeline\n",
    "from . import pipeline\n",
])
def test_the_checker_sees_a_cycle(tmp_path, source):
    """The checker itself: a module pair that import each other is reported."""
    graph = {"azr.pipeline": {"azr.x"}, "azr.x": {"azr.pipeline"}}
    assert _cycles(graph) == [["azr.pipeline", "azr.x"]]
    modules = {"azr.rewards": Path("r"), "azr.pipeline": Path("p"), "azr.x": Path("x")}
    path = tmp_path / "x.py"
    path.write_text(source)
    assert "azr.pipeline" in _imports("azr.x", path, modules)
