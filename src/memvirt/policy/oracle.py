"""``oracle``: the best schedule with hindsight -- an upper bound on what switching can gain.

A policy cannot see the future inside ``decide``, so the oracle works in two steps:

1. ``oracle_bound(trace, config)`` runs the trace statically in both modes (same
   sampling period, so the periods line up), then a dynamic program over the periods
   picks the mode of every period minimising

       sum of the period's cycles in the chosen mode (from the static runs)
       + for every switch: ``mode_switch``, plus for nested -> shadow the shadow refill
         ``R_k x (vm_exit + hv_pf_hidden)``,

   with period 0 fixed to ``selective.start_mode`` (no policy can choose it).  ``R_k`` is
   a *lower* bound on the hidden faults of the refill: the distinct pages the trace
   touches in period k (counted from the trace) minus the pages first mapped in it
   (its demand faults).  Cold TLBs and caches after a switch, and pages first touched
   later in a shadow stretch, are not charged.  Every simplification makes switching
   look cheaper, so the result is an optimistic bound (exact for the model "a period
   costs what it costs in a static run"), never a number a real policy is expected to
   reach.  The returned dict says so: ``is_bound: True``.

2. The ``oracle`` policy replays a schedule (parameter ``schedule``: one mode per
   period) in a real selective run: ``oracle_run(trace, config)`` does both steps and
   returns the bound and the replayed ``Result`` (whose ``selective.is_bound`` is true
   and whose ``selective.oracle_bound`` holds the bound).  The replay pays the true
   switch costs, so its cycles are at or above the bound.
"""

from __future__ import annotations

import numpy as np

from .. import api
from .. import counters as K
from ..config import Config
from ..trace.base import open_trace
from .base import MODES
from .replay import OraclePolicy


def needs_oracle_run(mode: str, policy, config: Config) -> bool:
    """Whether a run is the oracle without a schedule (the bound must be computed first)."""
    if mode != "selective":
        return False
    spec = policy if policy is not None else config.selective.policy
    return spec == "oracle" and "schedule" not in config.selective.policy_params


def simulate_with_oracle(trace, config=None, mode: str = "native", policy=None, **kw):
    """``memvirt.api.simulate``, except that a selective run with the ``oracle`` policy and
    no schedule first computes the bound and then replays its schedule (``oracle_run``).
    The command line, ``compare`` and sweeps run simulations through this function."""
    cfg = api.resolve_config(config)
    if needs_oracle_run(mode, policy, cfg):
        return oracle_run(trace, cfg)[1]
    return api.simulate(trace, cfg, mode, policy, **kw)


def _resolve(config) -> Config:
    return api.resolve_config(config)


def distinct_pages_per_period(trace, starts: list[int]) -> np.ndarray:
    """Distinct (process, page) pairs accessed in each period (periods start at the
    instruction counts ``starts``); the first page of every access."""
    starts_a = np.asarray(starts, np.int64)
    pid_ids: dict[int, int] = {}
    seen: list[np.ndarray] = []
    before = 0
    for ch in open_trace(trace).chunks(1 << 20):
        ic = ch.icount.astype(np.int64)
        cum_before = before + np.cumsum(ic) - ic
        before += int(ic.sum())
        acc = ch.kind <= 3
        if not acc.any():
            continue
        for p in np.unique(ch.pid[acc]).tolist():
            pid_ids.setdefault(p, len(pid_ids))
        uniq = np.array(sorted(pid_ids), np.int64)
        dense = np.array([pid_ids[p] for p in uniq.tolist()], np.int64)
        pid = dense[np.searchsorted(uniq, ch.pid[acc])]
        vpn = (ch.addr[acc] >> np.uint64(12)).astype(np.int64)
        period = np.searchsorted(starts_a, cum_before[acc], side="right") - 1
        pairs = np.stack([period, (pid << 46) | vpn], axis=1)
        seen.append(np.unique(pairs, axis=0))
    out = np.zeros(len(starts_a), np.int64)
    if seen:
        allp = np.unique(np.concatenate(seen), axis=0)
        out += np.bincount(allp[:, 0], minlength=len(starts_a))[:len(starts_a)]
    return out


def oracle_bound(trace, config=None) -> dict:
    """The oracle bound for ``trace`` (see the module docstring).

    Returns ``{"is_bound": True, "cycles", "schedule", "switches", "switch_cycles",
    "static_cycles": {"shadow", "nested"}, "best_static", "gain_vs_best_static",
    "period_instructions", "periods", "refill_pages", "note"}``.
    """
    cfg = _resolve(config)
    runs = {m: api.simulate(trace, cfg, m) for m in MODES}
    samples = {m: r.samples for m, r in runs.items()}
    n = len(samples["nested"])
    if len(samples["shadow"]) != n or any(
            a["start_instruction"] != b["start_instruction"]
            for a, b in zip(samples["shadow"], samples["nested"])):
        raise RuntimeError("static runs produced different sampling periods")  # cannot happen
    cost = cfg.cost
    hidden = cost.vm_exit + cost.hv_pf_hidden
    distinct = distinct_pages_per_period(trace, [s["start_instruction"] for s in samples["nested"]])
    demand = np.array([s["counters"][K.GPF_DEMAND] for s in samples["nested"]], np.int64)
    refill = np.maximum(distinct - demand, 0)
    cyc = {m: np.array([s["cycles"] for s in samples[m]], float) for m in MODES}

    def sw(frm: str, to: str, k: int) -> float:
        if frm == to:
            return 0.0
        return cost.mode_switch + (float(refill[k]) * hidden if to == "shadow" else 0.0)

    start = cfg.selective.start_mode
    inf = float("inf")
    best = {m: (cyc[m][0] if m == start else inf) for m in MODES}
    back: list[dict[str, str]] = []
    for k in range(1, n):
        new, arg = {}, {}
        for m in MODES:
            cands = [(best[p] + sw(p, m, k), p) for p in MODES]
            v, p = min(cands)
            new[m] = v + cyc[m][k]
            arg[m] = p
        back.append(arg)
        best = new
    last = min(MODES, key=lambda m: best[m])
    sched = [last]
    for arg in reversed(back):
        sched.append(arg[sched[-1]])
    sched.reverse()
    switch_cyc = sum(sw(sched[k - 1], sched[k], k) for k in range(1, n))
    switches = sum(1 for k in range(1, n) if sched[k] != sched[k - 1])
    static = {m: runs[m].cycles for m in MODES}
    best_static = min(MODES, key=lambda m: static[m])
    total = float(best[last])
    return {
        "is_bound": True,
        "note": "oracle upper bound: per-period static cycles with hindsight, switch costs "
                "underestimated (refill lower bound); not reachable by an online policy",
        "cycles": total,
        "schedule": sched,
        "switches": switches,
        "switch_cycles": switch_cyc,
        "static_cycles": static,
        "best_static": best_static,
        "gain_vs_best_static": 1.0 - total / static[best_static] if static[best_static] else 0.0,
        "period_instructions": cfg.selective.period_instructions,
        "periods": n,
        "refill_pages": refill.tolist(),
    }


def oracle_run(trace, config=None):
    """``(bound, result)``: the oracle bound and a real selective run replaying its schedule."""
    cfg = _resolve(config)
    bound = oracle_bound(trace, cfg)
    pol = OraclePolicy(cfg, schedule=bound["schedule"])
    res = api.simulate(trace, cfg, "selective", pol)
    if res.selective is not None:
        res.selective["oracle_bound"] = {k: v for k, v in bound.items() if k != "refill_pages"}
    return bound, res


__all__ = ["OraclePolicy", "distinct_pages_per_period", "needs_oracle_run", "oracle_bound",
           "oracle_run", "simulate_with_oracle"]
