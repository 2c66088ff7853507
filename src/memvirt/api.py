"""The Python API: ``simulate(trace, config, mode) -> Result``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import counters as K
from . import state as X
from .budget import SimulatorMemoryError, check_run, estimate_bytes, fmt_bytes
from .config import Config
from .engine import Machine, RecordError
from .errors import ConfigError, TraceError
from .policy.agile import scan_update
from .policy.base import policy_label
from .result import Result, sample_dict
from .trace.base import DEFAULT_CHUNK, locate_record, open_trace

MODE_CHOICES = ("native", "shadow", "nested", "selective", "agile")


def resolve_config(config) -> Config:
    if config is None:
        return Config()
    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return Config.from_dict(config)
    if isinstance(config, str | Path):
        return Config.load(config)
    raise ConfigError(f"config must be a Config, a dict or a TOML path, not {type(config).__name__}")


def simulate(trace, config=None, mode: str = "native", policy=None, *,
             chunk_records: int = DEFAULT_CHUNK, progress=None) -> Result:
    """Replay ``trace`` (a ``Trace``, a trace source or a file path) under ``mode``.

    ``mode`` is native, shadow, nested or selective; for selective, ``policy`` is a
    policy name, ``module:Class`` or a ``Policy`` instance (default: config
    ``selective.policy``).  ``progress(records_done)`` is called after every chunk.

    A trace whose footprint is known (its metadata's ``footprint_pages``) is refused with
    ``budget.MemoryBudgetError`` when the estimated peak memory is above
    ``run.memory_budget_fraction`` of the memory available; memory that runs out during the
    run gives ``budget.SimulatorMemoryError``.  Records the engine rejects give a
    ``TraceError`` naming the file and the position in it (the source's ``locate``).
    """
    cfg = resolve_config(config)
    if mode not in MODE_CHOICES:
        raise ConfigError(f"unknown mode '{mode}'; expected one of {', '.join(MODE_CHOICES)}")
    src = open_trace(trace)
    meta = dict(getattr(src, "meta", {}) or {})
    where = str(getattr(src, "path", None) or meta.get("path") or meta.get("name")
                or meta.get("generator") or "trace")
    check_run(src, cfg, mode, where, chunk_records)
    try:
        return _simulate(src, cfg, mode, policy, chunk_records, progress, where)
    except RecordError as e:
        raise _located(src, e) from None
    except SimulatorMemoryError as e:
        raise SimulatorMemoryError(f"{where}: {e}", e.record, e.pages) from None
    except MemoryError:  # building the machine (its guest frames), or the policy's
        est = estimate_bytes(cfg, mode, 0, chunk_records)
        raise SimulatorMemoryError(
            f"{where}: the simulator ran out of memory outside its records (building the "
            f"machine or the result; the fixed state for {cfg.guest.memory_mib:,} MiB of guest memory, guest.memory_mib, and "
            f"its caches takes about {fmt_bytes(est['fixed state'])}); run it on a machine "
            f"with more memory or lower guest.memory_mib") from None


def _located(src, e: RecordError) -> TraceError:
    """The engine's error about a record, with the file and the position in it when the
    source can place the record (``FILE:LINE``, ``FILE: byte N``, ``FILE: row N``), else
    the file and the record index, else (an in-memory trace) the record index alone."""
    where = locate_record(src, e.record)
    if where is not None:
        return TraceError(f"{where}: {e.reason} (memvirt record {e.record})")
    path = getattr(src, "path", None)
    if path is not None:
        return TraceError(f"{path}: record {e.record}: {e.reason}")
    return TraceError(str(e))


def _simulate(src, cfg: Config, mode: str, policy, chunk_records: int, progress,
              where: str) -> Result:
    selective = mode == "selective"
    pol = agile = None
    if selective:
        from .policy import make_policy

        # (the oracle without a schedule needs hindsight: memvirt.policy.oracle.oracle_run)
        pol = make_policy(policy if policy is not None else cfg.selective.policy, cfg)
        start = X.MODES[cfg.selective.start_mode]
    else:
        start = X.MODES[mode]
    if mode == "agile":
        from .policy.agile import make_agile_policy

        check_agile(cfg)
        agile = make_agile_policy(policy, cfg)
    m = Machine(cfg, start, agile.settings() if agile is not None else None)
    m.sync = trace_sync_interval(src)
    period = cfg.selective.period_instructions
    scan_every = agile.scan_instructions if agile is not None else 0
    scans: list[dict] = []
    warmup = cfg.run.warmup_instructions
    stlb_on = cfg.hw.stlb.entries > 0
    samples: list[dict] = []
    decisions: list[dict] = []
    prev = np.zeros(K.NCOUNTERS, np.int64)
    state = {"start": 0, "sample_due": period, "scan_due": scan_every or 2**62,
             "scan_counters": np.zeros(K.NCOUNTERS, np.int64)}
    warm: dict = {"counters": None, "records": 0, "instructions": 0}

    def next_boundary(instr: int) -> np.int64:
        """The next period end; the end of the warm-up is one too (at its first sync point),
        and so is agile paging's next scan."""
        b = min(state["sample_due"], state["scan_due"])
        if warm["counters"] is None and instr < warmup:
            b = min(b, warmup)
        return np.int64(b)

    def agile_scan(instr: int) -> None:
        m.agile_scan()
        delta = K.as_dict(m.C - state["scan_counters"])
        state["scan_counters"] = m.C.copy()
        changed = scan_update(agile, delta)
        if changed:
            m.set_agile(changed)
        scans.append({"instructions": instr, **({"settings": changed} if changed else {})})
        state["scan_due"] = (instr // scan_every + 1) * scan_every

    def take_sample() -> dict:
        delta = m.C - prev
        s = sample_dict(len(samples), state["start"], delta,
                        X.MODE_NAMES[int(m.S[X.S_MODE])], cfg.cost, stlb_on)
        s["warmup"] = warm["counters"] is None and warmup > 0
        samples.append(s)
        prev[:] = m.C
        state["start"] = int(m.C[K.INSTR])
        return s

    def on_period() -> None:
        instr = int(m.C[K.INSTR])
        if instr >= state["scan_due"]:
            agile_scan(instr)
        if instr < state["sample_due"] and not (warm["counters"] is None and 0 < warmup <= instr):
            m.boundary = next_boundary(instr)
            return  # a scan only
        state["sample_due"] = (instr // period + 1) * period
        take_sample()
        if warm["counters"] is None and warmup > 0 and int(m.C[K.INSTR]) >= warmup:
            warm.update(counters=m.C.copy(), records=m.position,
                        instructions=int(m.C[K.INSTR]))
        if pol is not None:
            cur = X.MODE_NAMES[int(m.S[X.S_MODE])]
            new, reason = pol.decide(samples, cur)
            decisions.append({"period": len(samples) - 1, "from": cur, "to": new,
                              "reason": reason})
            if new != cur:
                if new not in ("shadow", "nested"):
                    raise ConfigError(f"policy returned mode '{new}'; expected shadow or nested")
                # Applied before the next record runs, so a decision at the very end of the
                # trace costs nothing (it is reported as not applied).
                m.pending_mode = X.MODES[new]
        m.boundary = next_boundary(int(m.C[K.INSTR]))

    m.boundary = next_boundary(0)
    try:
        for chunk in src.chunks(chunk_records):
            m.run_chunk(chunk, on_period)
            if progress is not None:
                progress(m.records_done)
    except MemoryError:  # reading a chunk, the engine's buffers (its tables: grow_or_fail)
        pages = int(m.S[X.S_GLEAF_USED])
        raise SimulatorMemoryError(
            f"the simulator ran out of memory after {m.records_done:,} records (reading the "
            f"next chunk of {chunk_records:,} records or making room for it; about {pages:,} "
            f"distinct pages mapped, state {fmt_bytes(m.state_bytes())}); run the trace on a "
            f"machine with more memory", record=m.records_done, pages=pages) from None
    if m.pending_mode is not None and decisions:
        decisions[-1]["applied"] = False  # the trace ended before the next period began
        decisions[-1]["to"] = decisions[-1]["from"]
        decisions[-1]["reason"] += " (not applied: end of trace)"
    meta = dict(getattr(src, "meta", {}) or {})  # (readers may add to it as they read)
    if m.records_done == 0:
        raise TraceError(f"{where}: the trace has no records")
    if warmup > 0 and warm["counters"] is None:
        raise TraceError(f"{where}: the trace has {int(m.C[K.INSTR]):,} instructions, not more "
                         f"than the warm-up of {warmup:,} (run.warmup_instructions): nothing "
                         f"would be measured")
    if int(m.C[K.INSTR]) > state["start"] or not samples or np.any(m.C != prev):
        take_sample()

    whole = m.C.copy()
    steady = whole - warm["counters"] if warm["counters"] is not None else whole
    res = Result(mode=mode, counters=steady, config=cfg.to_dict(), cost=cfg.cost,
                 stlb_enabled=stlb_on, records=m.records_done, trace=_trace_summary(meta),
                 samples=samples, whole_counters=whole,
                 warmup={"requested": warmup, "instructions": warm["instructions"],
                         "records": warm["records"]})
    if agile is not None:
        res.policy = policy_label(agile)
        res.agile = {**agile.settings(), "scans": len(scans),
                     "settings_changed": [x for x in scans if "settings" in x]}
    if selective:
        res.policy = getattr(pol, "name", type(pol).__name__)
        res.selective = _selective_summary([s for s in samples if not s["warmup"]] or samples,
                                           decisions, pol)
    return res


def check_agile(cfg: Config) -> None:
    """Agile paging is modelled for 64-bit guests (as the paper): a clear error otherwise."""
    if cfg.guest.levels < 3:
        raise ConfigError(f"mode agile: guest.levels = {cfg.guest.levels} (a 32-bit guest) is "
                          "not supported; agile paging (Gandhi et al., ISCA 2016) is modelled "
                          "for x86-64 guests with 3 to 5 levels")


def trace_sync_interval(src) -> int:
    """The trace's sync-point interval G (``sync_instructions`` in its metadata; 1 when
    absent): sampling periods end only at sync points (``engine.run_records``)."""
    meta = getattr(src, "meta", None) or {}
    g = meta.get("sync_instructions", 1)
    if isinstance(g, bool) or not isinstance(g, int) or not 1 <= g <= 1 << 31:
        raise TraceError(f"{meta.get('path', 'trace')}: metadata sync_instructions={g!r} is not "
                         f"an integer between 1 and 2^31")
    return g


def _trace_summary(meta: dict) -> dict:
    keep = ("name", "source", "path", "command", "generator", "params", "capture_date",
            "tool_versions", "content_id")
    return {k: meta[k] for k in keep if k in meta}


def _selective_summary(samples: list[dict], decisions: list[dict], pol) -> dict:
    instr_in: dict[str, int] = {"nested": 0, "shadow": 0}
    cyc_in: dict[str, float] = {"nested": 0.0, "shadow": 0.0}
    for s in samples:
        instr_in[s["mode"]] = instr_in.get(s["mode"], 0) + s["instructions"]
        cyc_in[s["mode"]] = cyc_in.get(s["mode"], 0.0) + s["cycles"]
    switches = sum(1 for d in decisions if d["to"] != d["from"])
    total_cyc = sum(cyc_in.values()) or 1.0
    return {
        "policy": getattr(pol, "name", type(pol).__name__),
        "switches": switches,
        "instructions_in_mode": instr_in,
        "cycles_in_mode": cyc_in,
        "time_fraction_in_mode": {k: v / total_cyc for k, v in cyc_in.items()},
        "decisions": decisions,
        "is_bound": bool(getattr(pol, "is_bound", False)),
        "warnings": list(getattr(pol, "warnings", []) or []),
    }
