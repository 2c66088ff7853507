"""Switching policies for selective paging, and their registry.

Built-in policies: ``static`` (never switches), ``dsp`` (the published rules of
Wang et al., VEE 2011), ``cost`` (prices the other mode with the cost model) and
``oracle`` (replays a schedule computed by ``oracle_bound``: an upper bound).

``make_policy(spec, config)`` accepts a registered name, ``"module:Class"`` (the
module is imported, so any importable file works) or a ``Policy`` instance; the
parameters come from ``config.selective.policy_params``.  ``register_policy(name,
cls)`` adds a name.  See ``docs/policies.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..config import Config
from ..errors import ConfigError
from .base import MODES, Policy, other_mode

_POLICIES: dict[str, type[Policy]] = {}
_loaded = False
_BUILTIN = ("static", "dsp", "cost", "oracle")


def register_policy(name: str, cls: type[Policy]) -> type[Policy]:
    """Make ``cls`` available as ``name`` (for ``--policy name`` and ``selective.policy``)."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"bad policy name {name!r} (non-empty, no ':')")
    if not (isinstance(cls, type) and callable(getattr(cls, "decide", None))):
        raise TypeError(f"policy '{name}' must be a class with a decide() method")
    _POLICIES[name] = cls
    return cls


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN:  # importing a module registers its policy
        importlib.import_module(f"{__name__}.{mod}")


def policies() -> dict[str, type[Policy]]:
    """Every registered policy by name."""
    _load_builtin()
    return dict(sorted(_POLICIES.items()))


def resolve_policy_class(spec: str) -> type[Policy]:
    """The class for a registered name or ``module:Class``."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"policy must be a name, 'module:Class' or a Policy, got {spec!r}")
    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
        if not mod_name or not attr:
            raise ConfigError(f"policy '{spec}': expected 'module:Class'")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise ConfigError(f"policy '{spec}': cannot import module '{mod_name}': {e}") from None
        obj: Any = mod
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ConfigError(f"policy '{spec}': module '{mod_name}' has no '{attr}'")
            obj = getattr(obj, part)
        if not (isinstance(obj, type) and callable(getattr(obj, "decide", None))):
            raise ConfigError(f"policy '{spec}': '{attr}' is not a policy class "
                              "(a class with a decide(samples, current) method)")
        return obj
    known = policies()
    if spec not in known:
        raise ConfigError(f"unknown policy '{spec}'; known: {', '.join(known)} "
                          "(or 'module:Class')")
    return known[spec]


def make_policy(spec, config: Config | None = None,
                params: dict[str, Any] | None = None) -> Policy:
    """A ready policy for ``spec`` (name, ``module:Class``, class or instance).

    Parameters are ``config.selective.policy_params`` updated with ``params``; an
    instance is returned as is.
    """
    cfg = config if config is not None else Config()
    if isinstance(spec, Policy) or (not isinstance(spec, str | type)
                                    and callable(getattr(spec, "decide", None))):
        return spec
    cls = spec if isinstance(spec, type) else resolve_policy_class(spec)
    kw = {**cfg.selective.policy_params, **(params or {})}
    try:
        return cls(cfg, **kw)
    except TypeError as e:  # a user class with its own __init__ signature
        raise ConfigError(f"policy '{getattr(cls, 'name', cls.__name__)}': bad parameters "
                          f"{sorted(kw)}: {e}") from None


def __getattr__(name: str):  # lazy: the oracle imports the simulator
    if name == "oracle_bound":
        from .oracle import oracle_bound

        return oracle_bound
    raise AttributeError(name)


__all__ = ["MODES", "Policy", "make_policy", "oracle_bound", "other_mode", "policies",
           "register_policy", "resolve_policy_class"]
