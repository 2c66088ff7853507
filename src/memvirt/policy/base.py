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

Parameters come from ``config.selective.policy_params``; a key the policy does not
declare in ``defaults`` is a ``ConfigError`` naming it.  ``self.cost`` is the cost model
(``config.cost``); ``exit_cycles``, ``counters``, ``cycles_of`` help price events.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .. import counters as K
from ..config import Config
from ..errors import ConfigError

MODES = ("shadow", "nested")


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
