"""The modules of memvirt import each other one way: no import cycles.

Every ``import`` / ``from ... import`` statement of every module under ``src/memvirt`` is
read with ``ast`` (function-level ones included, since they run as soon as the function
does), as is ``importlib.import_module("literal")``.  ``from pkg import name`` is an
edge to ``pkg.name`` when that is a module, else to ``pkg`` (its ``__init__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PKG = "memvirt"


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for f in sorted((SRC / PKG).rglob("*.py")):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (f, is_pkg)
    return mods


def _targets(mod: str, is_pkg: bool, node: ast.AST, mods: dict) -> set[str]:
    out: set[str] = set()
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = mod.split(".") if is_pkg else mod.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = []
        for a in node.names:
            sub = f"{target}.{a.name}"
            names.append(sub if sub in mods else target)
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == "import_module" and node.args
          and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        names = [node.args[0].value]
    else:
        return out
    for n in names:
        # `import a.b.c` imports a.b.c; keep the longest prefix that is one of our modules
        while n and n not in mods:
            n = n.rpartition(".")[0]
        if n and n != mod:
            out.add(n)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for mod, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        deps: set[str] = set()
        for node in ast.walk(tree):
            deps |= _targets(mod, is_pkg, node, mods)
        graph[mod] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_the_graph_is_read():
    g = import_graph()
    assert "memvirt.report.load" in g["memvirt.report.html"]  # a module-level import
    assert "memvirt.report.plots" in g["memvirt.report.compare"]  # a function-level one
    assert "memvirt.counters" in g["memvirt.api"]  # `from . import counters as K`
    assert "memvirt.policy" in g["memvirt.api"]  # `from .policy import make_policy`


def test_the_detector_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_api_does_not_import_the_oracle():
    g = import_graph()
    assert "memvirt.policy.oracle" not in g["memvirt.api"]
    for mod in ("memvirt.report.tables", "memvirt.report.plots", "memvirt.report.html",
                "memvirt.report.load"):
        assert "memvirt.report.compare" not in g[mod], mod
