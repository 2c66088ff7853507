"""Switching policies for selective paging, and their registry.

Built-in policies: ``static`` (never switches), ``dsp`` (the published rules of
Wang et al., VEE 2011), ``cost`` (prices the other mode with the cost model) and
``oracle`` (replays a schedule computed by ``memvirt.policy.oracle.oracle_bound``: an
upper bound).

``make_policy(spec, config)`` accepts a registered name, ``"module:Class"`` (the
module is imported, so any importable file works) or a ``Policy`` instance; the
parameters come from ``config.selective.policy_params``.  ``register_policy(name,
cls)`` adds a name.  A policy's ``decide`` sees the samples read-only, and anything it
raises (or a return value that is not ``(mode, reason)``) is a ``PolicyError`` naming
it.  See ``docs/policies.md``.

The package is importable without the simulator: the oracle's bound, which runs the
simulator, lives in ``memvirt.policy.oracle`` (imported explicitly, never from here).
"""

from __future__ import annotations

from .base import MODES, Policy, PolicyError, Samples, other_mode
from .registry import (
    _POLICIES,
    check_policy_name,
    is_plugin,
    make_policy,
    policies,
    register_policy,
    resolve_policy_class,
)

__all__ = ["MODES", "Policy", "PolicyError", "Samples", "_POLICIES", "check_policy_name",
           "is_plugin", "make_policy", "other_mode", "policies", "register_policy",
           "resolve_policy_class"]
