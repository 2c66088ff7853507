"""Synthetic trace generators: deterministic, vectorized, one module per generator.

Each generator is a function taking keyword parameters (every one with a default) and
returning a ``Trace``.  Generators register themselves by name::

    from memvirt.trace.synth import register_generator

    def ramp(*, records=1000, seed=1):
        ...
        return trace

    register_generator("ramp", ramp, {"records": "records in the trace (default 1000)",
                                      "seed": "random seed (default 1)"})

``synthesize(name, **params)`` checks the name and the parameters (unknown names, wrong
types and out-of-range values raise ``MemvirtError`` naming them and listing the valid
ones), runs the generator and records provenance in ``Trace.meta``:
``{"source": "synth", "generator": name, "params": {...all parameters...}}``.

Built-in generators (see ``docs/workloads.md``): chase, compile, stream, churn, phases,
compute, hot, uniform, and spec (SPEC CPU2006 stand-ins of realistic length: it returns a
streaming source, with ``meta`` and ``chunks()``, instead of an in-memory ``Trace``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import MemvirtError
from ..records import Trace

BUILTIN = ("chase", "compile", "stream", "churn", "phases", "compute", "hot", "uniform", "spec")


@dataclass(frozen=True)
class GeneratorSpec:
    """A registered generator: its function, parameter docs and defaults."""

    name: str
    func: Callable[..., Trace]
    params_doc: dict[str, str]
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


_GENERATORS: dict[str, GeneratorSpec] = {}
_loaded = False


def register_generator(name: str, func: Callable[..., Trace], params_doc: dict[str, str],
                       summary: str | None = None) -> GeneratorSpec:
    """Add a generator.  Every parameter of ``func`` must be keyword-capable, have a default
    (an int, float or str, which fixes its type) and be described in ``params_doc``."""
    defaults: dict[str, Any] = {}
    for p in inspect.signature(func).parameters.values():
        if p.name == "memory_budget_fraction":
            raise ValueError(f"generator '{name}': the parameter name '{p.name}' is taken by "
                             "synthesize()")
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise ValueError(f"generator '{name}': parameter '{p.name}' must be a keyword")
        if p.default is p.empty:
            raise ValueError(f"generator '{name}': parameter '{p.name}' needs a default")
        if type(p.default) not in (int, float, str):
            raise ValueError(f"generator '{name}': default of '{p.name}' must be int, float "
                             "or str")
        defaults[p.name] = p.default
    missing = set(defaults) - set(params_doc)
    extra = set(params_doc) - set(defaults)
    if missing or extra:
        raise ValueError(f"generator '{name}': params_doc does not match the parameters "
                         f"(undocumented: {sorted(missing)}, unknown: {sorted(extra)})")
    if summary is None:
        mod = inspect.getmodule(func)
        text = (func.__doc__ or (mod.__doc__ if mod else "") or "").strip()
        summary = text.splitlines()[0] if text else ""
    spec = GeneratorSpec(name, func, dict(params_doc), defaults, summary)
    _GENERATORS[name] = spec
    return spec


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN:  # importing a module registers its generator
        importlib.import_module(f"{__name__}.{mod}")


def generators() -> dict[str, GeneratorSpec]:
    """All registered generators by name (built-in ones included)."""
    _load_builtin()
    return dict(sorted(_GENERATORS.items()))


def _coerce(gen: str, key: str, value, default):
    want = type(default)
    if isinstance(value, bool):
        value = int(value)
    if want is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""), 0)
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    f = None
                if f is not None and f.is_integer():
                    return int(f)
        raise MemvirtError(f"synth generator '{gen}': parameter '{key}' must be an integer, "
                           f"got {value!r}")
    if want is float:
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.replace("_", ""))
            except ValueError:
                pass
        raise MemvirtError(f"synth generator '{gen}': parameter '{key}' must be a number, "
                           f"got {value!r}")
    if not isinstance(value, str):
        raise MemvirtError(f"synth generator '{gen}': parameter '{key}' must be a string, "
                           f"got {value!r}")
    return value


def resolve_params(name: str, **params) -> tuple[GeneratorSpec, dict[str, Any]]:
    """The generator and its full parameter set (defaults filled in, types coerced)."""
    gens = generators()
    if name not in gens:
        raise MemvirtError(f"unknown synth generator '{name}'; known: {', '.join(gens)}")
    spec = gens[name]
    unknown = [k for k in params if k not in spec.defaults]
    if unknown:
        raise MemvirtError(
            f"synth generator '{name}' has no parameter '{unknown[0]}'; valid: "
            f"{', '.join(spec.defaults)}"
        )
    full = dict(spec.defaults)
    for k, v in params.items():
        full[k] = _coerce(name, k, v, spec.defaults[k])
    return spec, full


def synthesize(name: str, *, memory_budget_fraction: float | None = None, **params) -> Trace:
    """Generate the trace of generator ``name`` with ``params`` (the rest default).

    A generator that builds its whole trace in memory (every one with a ``records``
    parameter) is refused with ``MemoryBudgetError`` when it would take more than
    ``memory_budget_fraction`` of the memory available (default
    ``budget.DEFAULT_FRACTION``; 0 turns the check off): 10^9 records are tens of GB."""
    from ...budget import DEFAULT_FRACTION, check_synth

    spec, full = resolve_params(name, **params)
    if "records" in full:
        check_synth(name, full["records"], DEFAULT_FRACTION if memory_budget_fraction is None
                    else memory_budget_fraction)
    trace = spec.func(**full)
    trace.meta = {**trace.meta, "source": "synth", "generator": name, "params": full}
    return trace


__all__ = [
    "GeneratorSpec",
    "generators",
    "register_generator",
    "resolve_params",
    "synthesize",
]
