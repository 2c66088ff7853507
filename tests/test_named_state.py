"""The kernels' shared state is addressed by name only (st.guest_leaf), never by position.

The check reads every module under src/memvirt with ``ast``.  In each function (and at module
level) a name is taken for the machine state when it is used as ``NAME.field`` with a field
of ``MachineState`` (``st.guest_leaf``, ``state.scalars``), when it is a parameter called
``st`` or ``ms`` without an annotation naming another type, or when it is assigned from
``MachineState(...)`` or ``<...>.state()`` (``self`` is never taken: the engine's
``Machine`` holds the arrays as attributes and builds the tuple in ``state()``).  On such a name (or directly on such a call) it
fails on every positional form: a subscript with any index (``st[10]``, ``st[9:12]``,
``st[i]``), unpacking (``a, *b = st``, ``for a, b in ...`` is not unpacking of it),
``f(*st)``, ``st.__getitem__`` and ``getattr(st, <not a constant>)``.  Names that hold other
things (``mvstream``'s ``state`` array, a ``dict`` called ``st``) are left alone because
nothing reads a ``MachineState`` field from them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from memvirt import state as X

SRC = Path(__file__).resolve().parents[1] / "src" / "memvirt"
FIELDS = frozenset(X.MachineState._fields)
BY_NAME = frozenset({"st", "ms"})  # the kernels' convention for the state parameter
PRODUCERS = frozenset({"MachineState", "state"})  # calls that return the state
NOT_STATE = frozenset({"self", "cls"})  # an object holding the arrays, not the tuple


def _is_producer(node: ast.AST) -> bool:
    """``MachineState(...)``, ``X.MachineState(...)``, ``self.state()``."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    return name in PRODUCERS


def _annotation_names(ann: ast.AST | None) -> set[str]:
    if ann is None:
        return set()
    return {n.id for n in ast.walk(ann) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(ann) if isinstance(n, ast.Attribute)} | {
        n.value for n in ast.walk(ann) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _own_nodes(scope: ast.AST):
    """The nodes of a scope, not descending into nested functions, lambdas or classes
    (they are scopes of their own; a nested function's free ``st`` is found there by its
    field accesses)."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                 ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))


def _state_names(scope: ast.AST) -> set[str]:
    names = set()
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        a = scope.args
        for arg in a.posonlyargs + a.args + a.kwonlyargs:
            other = _annotation_names(arg.annotation) - {"MachineState"}
            if arg.arg in BY_NAME and not other:
                names.add(arg.arg)
    for node in _own_nodes(scope):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.attr in FIELDS and node.value.id not in NOT_STATE):
            names.add(node.value.id)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None \
                and _is_producer(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _is_state(node: ast.AST, names: set[str]) -> bool:
    return (isinstance(node, ast.Name) and node.id in names) or _is_producer(node)


def positional_uses(source: str, filename: str = "<source>") -> list[str]:
    """Every positional use of the machine state in ``source``: ``file:line: text``."""
    tree = ast.parse(source, filename)
    lines = source.splitlines()
    found: dict[int, str] = {}

    def hit(node: ast.AST, why: str) -> None:
        text = lines[node.lineno - 1].strip() if node.lineno <= len(lines) else ""
        found.setdefault(node.lineno, f"{filename}:{node.lineno}: {why}: {text}")

    scopes = [tree] + [n for n in ast.walk(tree)
                       if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    for scope in scopes:
        names = _state_names(scope)
        for node in _own_nodes(scope):
            if isinstance(node, ast.Subscript) and _is_state(node.value, names):
                hit(node, "subscript")
            elif isinstance(node, ast.Attribute) and node.attr == "__getitem__" \
                    and _is_state(node.value, names):
                hit(node, "__getitem__")
            elif isinstance(node, ast.Starred) and _is_state(node.value, names):
                hit(node, "star-unpacking")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id == "getattr" and node.args \
                    and _is_state(node.args[0], names) \
                    and not (len(node.args) > 1 and isinstance(node.args[1], ast.Constant)):
                hit(node, "getattr with a computed name")
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
                value = node.value
                if value is not None and _is_state(value, names):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if any(isinstance(t, (ast.Tuple, ast.List)) for t in targets):
                        hit(node, "unpacking")
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                if _is_state(node.iter, names) and isinstance(node.target, (ast.Tuple,
                                                                            ast.List)):
                    hit(node.iter, "unpacking")
    return [found[k] for k in sorted(found)]


def test_no_module_uses_the_state_by_position():
    offenders = []
    modules = sorted(SRC.rglob("*.py"))
    assert len(modules) > 50 and SRC / "engine.py" in modules
    for path in modules:
        offenders += positional_uses(path.read_text(encoding="utf-8"),
                                     str(path.relative_to(SRC)))
    assert not offenders, "positional use of the machine state:\n" + "\n".join(offenders)


def test_the_checker_sees_the_kernels_state():
    """It is not vacuous: the kernels' ``st`` parameters are recognised as the state."""
    src = (SRC / "hw" / "walk.py").read_text(encoding="utf-8")
    tree = ast.parse(src)
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
             and n.args.args and n.args.args[0].arg == "st"]
    assert funcs and all("st" in _state_names(f) for f in funcs)


BAD = [
    ("def f(st):\n    return st[10]\n", "subscript"),
    ("def f(state):\n    s = state.scalars\n    return state[10]\n", "subscript"),
    ("def f(ms):\n    return ms[-1]\n", "subscript"),
    ("def f(st):\n    a, b, c = st[9:12]\n", "subscript"),
    ("def f(st, i):\n    return st[i]\n", "subscript"),
    ("def f(x):\n    y = x.guest_leaf\n    return x[X.S_MODE]\n", "subscript"),
    ("def f(st):\n    a, *b = st\n", "unpacking"),
    ("def f(st):\n    a, b = st\n", "unpacking"),
    ("def f(st):\n    [a, b] = st\n", "unpacking"),
    ("def f(st):\n    return g(*st)\n", "star-unpacking"),
    ("def f(st):\n    return st.__getitem__(3)\n", "__getitem__"),
    ("def f(st, k):\n    return getattr(st, k)\n", "getattr with a computed name"),
    ("def f(st):\n    return getattr(st, X.MachineState._fields[3])\n",
     "getattr with a computed name"),
    ("def f(self):\n    return self.state()[3]\n", "subscript"),
    ("def f(a):\n    s = X.MachineState(*a)\n    return s[0]\n", "subscript"),
    ("def outer(st):\n    def inner():\n        return st.p2m, st[4]\n    return inner\n",
     "subscript"),
]


@pytest.mark.parametrize("src, why", BAD, ids=[b[0].split("\n")[-2].strip() for b in BAD])
def test_the_checker_catches_each_positional_form(src, why):
    found = positional_uses(src)
    assert len(found) == 1 and f": {why}: " in found[0], found


GOOD = [
    "def f(st):\n    return st.guest_leaf\n",
    "def f(st):\n    S = st.scalars\n    return S[X.S_MODE], S[0], st.counters[K.LOADS]\n",
    "def f(st):\n    return getattr(st, 'p2m')\n",
    "def f(self):\n    return sum(a.nbytes for a in self.state())\n",
    # mvstream: a uint64 array called state, not the machine state
    "def _decode(buf, pos, state):\n    a, b = state[0], state[1]\n    state[0] = a\n",
    # a dict called st (cli/workloads)
    "def _state(st: dict) -> str:\n    return st['captured']\n",
    "def g(st: '_WriterState'):\n    return st.queue[0]\n",
    # the engine's Machine: attributes named like fields, and it is no tuple
    "class M:\n    def f(self):\n        return self.p2m, self[0]\n",
]


@pytest.mark.parametrize("src", GOOD)
def test_the_checker_passes_named_access(src):
    assert positional_uses(src) == []


def test_machine_state_fields_are_unique_names():
    fields = X.MachineState._fields
    assert len(set(fields)) == len(fields)
    assert "guest_leaf" in fields and "p2m" in fields and "frame_refcount" in fields
