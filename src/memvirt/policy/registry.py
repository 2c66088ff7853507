"""The policy registry: names -> policy classes, ``module:Class`` loading, ``make_policy``.

Built-in policies are listed here by module and class and imported on first use; the
modules that define them do not import this one, so the dependency is one-way.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..config import Config
from ..errors import ConfigError, MemvirtError
from .base import Policy, PolicyError, exception_text, policy_label

_POLICIES: dict[str, type] = {}
_loaded = False
# name -> (module in this package, class)
_BUILTIN = {"static": ("static", "StaticPolicy"), "dsp": ("dsp", "DspPolicy"),
            "cost": ("cost", "CostPolicy"), "oracle": ("replay", "OraclePolicy")}


def register_policy(name: str, cls: type) -> type:
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
    pkg = __name__.rpartition(".")[0]
    for name, (mod, cls) in _BUILTIN.items():
        _POLICIES.setdefault(name, getattr(importlib.import_module(f"{pkg}.{mod}"), cls))


def policies() -> dict[str, type]:
    """Every registered policy by name."""
    _load_builtin()
    return dict(sorted(_POLICIES.items()))


def is_plugin(spec: Any) -> bool:
    """Whether ``spec`` names a ``module:Class`` policy (loading it imports user code)."""
    return isinstance(spec, str) and ":" in spec


def check_policy_name(spec: Any) -> None:
    """Check a policy spec without importing any user module: a registered name, or a
    well-formed ``module:Class`` (``ConfigError`` otherwise)."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"policy must be a name, 'module:Class' or a Policy, got {spec!r}")
    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
        if not mod_name or not attr or not all(p.isidentifier()
                                               for p in [*mod_name.split("."),
                                                         *attr.split(".")]):
            raise ConfigError(f"policy '{spec}': expected 'module:Class'")
        return
    known = policies()
    if spec not in known:
        raise ConfigError(f"unknown policy '{spec}'; known: {', '.join(known)} "
                          "(or 'module:Class')")


def resolve_policy_class(spec: str) -> type:
    """The class for a registered name or ``module:Class`` (which imports the module)."""
    check_policy_name(spec)
    if ":" in spec:
        obj = import_object(spec)
        if not (isinstance(obj, type) and callable(getattr(obj, "decide", None))):
            raise ConfigError(f"policy '{spec}': '{spec.partition(':')[2]}' is not a policy "
                              "class (a class with a decide(samples, current) method)")
        return obj
    return policies()[spec]


def import_object(spec: str) -> Any:
    """The object ``module:attr`` names (the module is imported: user code, contained: any
    failure is a ``ConfigError`` naming ``spec``)."""
    mod_name, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"policy '{spec}': cannot import module '{mod_name}': {e}") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a broken user module
        raise ConfigError(f"policy '{spec}': importing module '{mod_name}' failed: "
                          f"{exception_text(e)}") from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"policy '{spec}': module '{mod_name}' has no '{attr}'")
        obj = getattr(obj, part)
    return obj


class _Adapter(Policy):
    """Contains a policy object that does not derive from ``Policy`` (duck-typed): its
    ``decide`` is guarded like every ``Policy``'s."""

    def __init__(self, inner: Any, config: Config):
        self.inner = inner
        self.config = config
        self.cost = config.cost
        self.params = dict(getattr(inner, "params", {}) or {})

    @property
    def name(self) -> str:  # type: ignore[override]
        return policy_label(self.inner)

    @property
    def is_bound(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.inner, "is_bound", False))

    def decide(self, samples, current):
        return self.inner.decide(samples, current)


def make_policy(spec, config: Config | None = None,
                params: dict[str, Any] | None = None) -> Policy:
    """A ready policy for ``spec`` (name, ``module:Class``, class or instance).

    Parameters are ``config.selective.policy_params`` updated with ``params``; a
    ``Policy`` instance is returned as is.  A constructor that fails is a ``PolicyError``
    naming the policy.
    """
    cfg = config if config is not None else Config()
    if isinstance(spec, Policy):
        return spec
    if not isinstance(spec, str | type) and callable(getattr(spec, "decide", None)):
        return _Adapter(spec, cfg)
    cls = spec if isinstance(spec, type) else resolve_policy_class(spec)
    kw = {**cfg.selective.policy_params, **(params or {})}
    try:
        pol = cls(cfg, **kw)
    except MemvirtError:
        raise
    except TypeError as e:  # a user class with its own __init__ signature
        raise ConfigError(f"policy '{policy_label(cls)}': bad parameters {sorted(kw)}: "
                          f"{e}") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - user code, contained
        raise PolicyError(f"policy '{policy_label(cls)}': creating it failed: "
                          f"{exception_text(e)}") from None
    return pol if isinstance(pol, Policy) else _Adapter(pol, cfg)


__all__ = ["check_policy_name", "is_plugin", "make_policy", "policies", "register_policy",
           "resolve_policy_class"]
