"""``oracle``: the policy that replays a precomputed schedule (one mode per period).

The schedule comes from ``memvirt.policy.oracle.oracle_bound`` (the best schedule with
hindsight); this module holds only the replaying policy, so the registry can load it
without importing the simulator.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import MODES, Policy


class OraclePolicy(Policy):
    """Replays a precomputed schedule (``schedule[k]`` = mode of period k)."""

    name = "oracle"
    is_bound = True
    defaults = {"schedule": None}

    def __init__(self, config=None, **params):
        super().__init__(config, **params)
        sched = self.params["schedule"]
        if sched is None:
            raise ConfigError(
                "policy 'oracle' needs parameter 'schedule' (one mode per period); compute it "
                "with memvirt.policy.oracle.oracle_bound(trace, config), or run "
                "memvirt.policy.oracle.oracle_run(trace, config) (the CLI does this)")
        if not isinstance(sched, list | tuple) or any(m not in MODES for m in sched):
            raise ConfigError("policy 'oracle' parameter 'schedule' must be a list of "
                              "'shadow'/'nested'")
        self.schedule = list(sched)

    def decide(self, samples, current):
        k = len(samples)  # the period about to start
        if k < len(self.schedule):
            want = self.schedule[k]
            return want, f"oracle (bound): schedule says {want} for period {k}"
        return current, f"oracle (bound): schedule ends before period {k} -> stay in {current}"


__all__ = ["OraclePolicy"]
