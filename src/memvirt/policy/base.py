"""The switching-policy API of selective paging.

A policy is asked, at the end of every sampling period, which mode the *next* period
runs in.  It sees every sample so far (``samples[-1]`` is the period that just ended;
see ``memvirt.result.sample_dict`` for the keys) and the mode the VM is in now::

    class MyPolicy(Policy):
        name = "mine"
        defaults = {"limit": 10.0}          # the parameters it accepts, with defaults

        def decide(self, samples, current):
            ftlb, fpf = self.rates(samples[-1])
            if ftlb > self.params["limit"]:
                return "shadow", f"FTLB {ftlb:.3g} > {self.params['limit']}"
            return current, "stay"

``samples`` is read-only (``Samples``: each sample a read-only mapping), and whatever
``decide`` does wrong -- raise, ``sys.exit()``, return something other than a
``(mode, reason)`` pair -- is a ``PolicyError`` naming the policy: every subclass's
``decide`` is wrapped when the class is created (``Policy.__init_subclass__``).

Parameters come from ``config.selective.policy_params``; a key the policy does not
declare in ``defaults`` is a ``ConfigError`` naming it.  ``self.cost`` is the cost model
(``config.cost``); ``exit_cycles``, ``counters``, ``cycles_of`` help price events.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from .. import counters as K
from ..config import Config
from ..errors import ConfigError, MemvirtError

MODES = ("shadow", "nested")


class PolicyError(ConfigError):
    """A switching policy that failed: it raised, exited, or returned something other than
    a ``(mode, reason)`` pair (names the policy)."""


def policy_label(obj: Any) -> str:
    """The name a policy is known by in messages: its ``name``, else ``module:Class``."""
    cls = obj if isinstance(obj, type) else type(obj)
    name = getattr(obj, "name", None)
    if isinstance(name, str) and name and name != "policy":
        return name
    return f"{cls.__module__}:{cls.__qualname__}"


def exception_text(e: BaseException) -> str:
    if isinstance(e, SystemExit):
        return f"called sys.exit({e.code!r})"
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} ({e.filename}, line {e.lineno})"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ---------------------------------------------------------------------- read-only samples


def _freeze(v: Any) -> Any:
    if isinstance(v, dict):
        return MappingProxyType({k: _freeze(x) for k, x in v.items()})
    if isinstance(v, list | tuple):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, np.ndarray):
        a = v.copy()
        a.setflags(write=False)
        return a
    return v


class _FrozenCache:
    """Read-only copies of samples, made once per sample (``srcs[i]`` is the original)."""

    __slots__ = ("srcs", "frozen")

    def __init__(self) -> None:
        self.srcs: list[Any] = []
        self.frozen: list[Any] = []

    def get(self, i: int, src: Any) -> Any:
        if i < len(self.srcs) and self.srcs[i] is src:
            return self.frozen[i]
        while len(self.srcs) <= i:
            self.srcs.append(None)
            self.frozen.append(None)
        self.srcs[i] = src
        self.frozen[i] = f = _freeze(src)
        return f


class Samples(Sequence):
    """What ``decide`` gets: a read-only view of the samples so far (each sample a
    read-only mapping, its lists tuples), so a policy cannot change the run's record."""

    __slots__ = ("_src", "_cache")

    def __init__(self, src: Sequence, cache: _FrozenCache | None = None):
        self._src = src
        self._cache = cache if cache is not None else _FrozenCache()

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self._src)))]
        n = len(self._src)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError("sample index out of range")
        return self._cache.get(j, self._src[j])

    def __repr__(self) -> str:
        return f"Samples({len(self)} periods, read-only)"


def _samples_view(policy: Any, samples: Any) -> Any:
    if isinstance(samples, Samples):
        return samples
    try:
        cache = policy.__dict__.get("_mv_samples")
        if cache is None or cache[0] is not samples:
            cache = (samples, _FrozenCache())
            policy.__dict__["_mv_samples"] = cache
        return Samples(samples, cache[1])
    except AttributeError:  # no instance dict (__slots__)
        return Samples(samples)


def _guarded(fn):
    """Wrap a ``decide`` so that a failing or misbehaving policy is a ``PolicyError``
    naming it, and so that it sees the samples read-only."""
    if getattr(fn, "_mv_guarded", False):
        return fn

    @functools.wraps(fn)
    def decide(self, samples, current):
        try:
            out = fn(self, _samples_view(self, samples), current)
        except MemvirtError:
            raise
        except (Exception, SystemExit) as e:  # noqa: BLE001 - user code, contained
            raise PolicyError(f"policy '{policy_label(self)}': decide() failed: "
                              f"{exception_text(e)}") from e
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise PolicyError(f"policy '{policy_label(self)}': decide() returned "
                              f"{_short(out)}; expected a (mode, reason) pair")
        mode, why = out
        if mode not in MODES:
            raise PolicyError(f"policy '{policy_label(self)}' returned mode {mode!r}; "
                              "expected shadow or nested")
        return str(mode), str(why)

    decide._mv_guarded = True  # type: ignore[attr-defined]
    return decide


def _short(x: Any) -> str:
    r = repr(x)
    return r if len(r) <= 80 else r[:77] + "..."


def other_mode(mode: str) -> str:
    """The mode a switch would go to."""
    return "nested" if mode == "shadow" else "shadow"


class Policy:
    """Base class of switching policies.

    Subclasses set ``name``, declare their parameters in ``defaults`` (name -> default;
    the default's type is the parameter's type, ``None`` accepts anything) and implement
    ``decide``.  ``is_bound = True`` marks a policy whose result is an upper bound that
    no online policy can reach (the oracle), so reports can say so.
    """

    name: ClassVar[str] = "policy"
    is_bound: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "decide" in cls.__dict__ and callable(cls.__dict__["decide"]):
            cls.decide = _guarded(cls.__dict__["decide"])

    def __init__(self, config: Config | None = None, **params: Any):
        self.config = config if config is not None else Config()
        self.cost = self.config.cost
        self.params = self.check_params(params)

    # ------------------------------------------------------------------ parameters
    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """``defaults`` updated with ``params``; unknown keys and wrong types raise ConfigError."""
        known = cls.defaults
        out = dict(known)
        for key, value in params.items():
            if key not in known:
                valid = ", ".join(sorted(known)) or "none"
                raise ConfigError(
                    f"policy '{cls.name}' has no parameter '{key}' "
                    f"(selective.policy_params.{key}); valid: {valid}")
            out[key] = _coerce(cls.name, key, value, known[key])
        return out

    # ------------------------------------------------------------------ the decision
    def decide(self, samples: list[dict], current: str) -> tuple[str, str]:
        """The mode of the next period ("shadow" or "nested") and a human-readable reason."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def rates(sample: dict) -> tuple[float, float]:
        """(TLB misses, guest page faults) per 1,000 instructions of one sample."""
        instr = sample["instructions"]
        if not instr:
            return 0.0, 0.0
        return (1000.0 * sample["tlb_misses"] / instr,
                1000.0 * sample["guest_page_faults"] / instr)

    @staticmethod
    def counters(sample: dict) -> np.ndarray:
        """The raw counter deltas of one sample (indexed by ``memvirt.counters`` constants)."""
        return np.asarray(sample["counters"], dtype=np.int64)

    @staticmethod
    def cumulative(samples: list[dict]) -> np.ndarray:
        """Counters summed over ``samples``."""
        tot = np.zeros(K.NCOUNTERS, np.int64)
        for s in samples:
            tot += np.asarray(s["counters"], dtype=np.int64)
        return tot

    def unit(self, name: str) -> float:
        """One unit cost of the cost model (a ``CostConfig`` field), in cycles."""
        return float(getattr(self.cost, name))

    def exit_cycles(self, reason: str) -> float:
        """Cycles of one VM exit for ``reason`` (a key of ``counters.EXIT_REASONS``):
        the exit/entry round trip plus the VMM's handler."""
        _, param = K.EXIT_REASONS[reason]
        return self.unit("vm_exit") + self.unit(param)

    def cycles_of(self, counts: np.ndarray) -> float:
        """Cycles the cost model charges for a counter vector."""
        return K.total_cycles(K.breakdown(counts, self.cost))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


Policy.decide = _guarded(Policy.decide)  # type: ignore[method-assign]


def _coerce(policy: str, key: str, value: Any, default: Any) -> Any:
    where = f"policy '{policy}' parameter '{key}' (selective.policy_params.{key})"
    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where} must be a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if isinstance(default, list | tuple):
        if isinstance(value, list | tuple):
            return list(value)
        raise ConfigError(f"{where} must be a list, got {value!r}")
    return value
