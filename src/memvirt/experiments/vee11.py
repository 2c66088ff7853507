"""The VEE 2011 experiment: shadow, nested and selective paging on a 2-level and a 4-level guest.

Reproduces the shape of the selective-paging study (Wang et al., VEE 2011) on the
``nehalem-2010`` machine profile: every workload runs under native, shadow and nested
paging and under selective paging with the ``dsp`` and ``cost`` policies, with a 2-level
(32-bit, like the study's guests) and a 4-level (64-bit) guest page table.  Reported per
run: the run time normalised to the better static mode of the same workload and guest,
the number of mode switches and the share of time spent in each mode.

Workloads: the realistic suite (docs/workloads.md), the same as ``memvirt experiment
realistic`` runs, after a warm-up that is not counted (figures are steady state, the whole
run beside them):

- the SPEC-like stand-ins (``trace.synth.suite.spec_suite``: 10^9 instructions, rates inside
  what the study measured on SPEC CPU2006; phased-like alternates regimes over 6 x 10^9)
  and the fork / mmap churn microbenchmarks, named as such;
- the real-program suite (``memvirt workloads``), those already captured (``--capture``
  captures the others; ``--no-real`` leaves them out).  They are not classified by regime:
  reported, no claim is made on them.

``--quick`` runs the demo's subset (``demo_suite``: the same footprints and rates at
1.2 x 10^8 instructions; phased-like with phases of 1.5 x 10^8), whose verdicts are the
full-length runs' (tests/test_demo_subset.py).

Real captures are x86-64 processes (Valgrind puts the client stack near 2^37): for the
2-level guest their addresses are folded into a 32-bit address space by
``Fold32Source`` (256 MiB regions above 3 GiB are moved, whole, below it; offsets inside a
region are kept, so page-table shapes below 256 MiB are unchanged).

``run(...)`` returns the results as a dict (also written as ``vee11.json``);
``checks(results)`` evaluates the study's qualitative claims on it (the tests use both).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import Config
from ..errors import MemvirtError
from ..trace.records import Kind, Trace
from ..trace.synth.suite import POLICY_PERIOD, POLICY_WINDOW

PROFILE = "nehalem-2010"
LEVELS = (2, 4)
POLICIES = ("dsp", "cost")
STATIC = ("shadow", "nested")
SELECTIVE_TOLERANCE = 0.02  # "selective within 2% of the better static mode"
# Warm-up (instructions simulated but not counted: start-up, first touches, cold TLBs and
# caches, the policies' settling), as the realistic experiment: the figures are steady
# state, the whole run beside.  Quick runs use the demo's (DEMO_WARMUP).
WARMUP = 100_000_000

# Regimes: which static mode the study's reasoning says should win.
#   "fault": guest-page-fault bound -> nested;  "tlb": TLB-miss bound -> shadow;
#   "phased": alternating regimes -> selective can beat both;  "neutral": close to a tie;
#   "": not classified (the real programs: reported, no claim made on them).
EXPECTED_WINNER = {"fault": "nested", "tlb": "shadow"}
SINGLE_REGIME = ("fault", "tlb", "neutral")
MICRO_REGIME = "fault"  # the fork and mmap churn microbenchmarks
# phased-like's phases (1.5 x 10^9 instructions) at quick length: four phases of 1.5 x 10^8
QUICK_PHASE_INSTRUCTIONS = 150_000_000


# ----------------------------------------------------------------------------- 32-bit fold
REGION_SHIFT = 28  # 256 MiB regions
FOLD_LIMIT = 0xC000_0000  # 32-bit Linux user space ends at 3 GiB


def _record_regions(tr: Trace) -> np.ndarray:
    """256 MiB regions touched by a chunk's accesses, mmaps, munmaps and brks."""
    k = tr.kind
    sel = (k <= Kind.MODIFY) | (k == Kind.MMAP) | (k == Kind.MUNMAP) | (
        (k == Kind.BRK) & (tr.addr != 0))
    a = tr.addr[sel]
    if not len(a):
        return np.zeros(0, np.uint64)
    sz = tr.size[sel]
    last = a + np.where(sz > 0, sz - np.uint64(1), np.uint64(0))
    lo = (a >> np.uint64(REGION_SHIFT)).astype(np.int64)
    hi = (last >> np.uint64(REGION_SHIFT)).astype(np.int64)
    n = int(hi.max()) + 1
    if n <= 1 << 21:  # 48-bit addresses: 2^20 regions, a counting pass beats sorting
        seen = np.bincount(lo, minlength=n) + np.bincount(hi, minlength=n)
        out = [np.nonzero(seen)[0].astype(np.uint64)]
    else:
        out = [np.unique(lo).astype(np.uint64), np.unique(hi).astype(np.uint64)]
    span = hi > lo + 1  # a range over three or more regions: list the ones in between
    for x, y in zip(lo[span].tolist(), hi[span].tolist()):
        out.append(np.arange(x + 1, y, dtype=np.uint64))
    return np.unique(np.concatenate(out))


def fold_map(regions: np.ndarray) -> dict[int, int]:
    """Region -> new region: runs of adjacent regions wholly below 3 GiB stay; the others
    move, run by run and keeping their order, to free regions counted down from 3 GiB."""
    regs = sorted(int(r) for r in regions)
    runs: list[list[int]] = []
    for r in regs:
        if runs and r == runs[-1][-1] + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    limit = FOLD_LIMIT >> REGION_SHIFT
    keep = [run for run in runs if run[-1] < limit]
    used = {r for run in keep for r in run}
    mapping = {r: r for r in used}
    top = limit
    for run in sorted((r for r in runs if r[-1] >= limit), key=lambda r: -r[0]):
        n = len(run)
        start = top - n
        while start >= 0 and any(s in used for s in range(start, start + n)):
            start -= 1
        if start < 1:
            raise MemvirtError("trace does not fit a 32-bit address space (too many regions)")
        for i, r in enumerate(run):
            mapping[r] = start + i
            used.add(start + i)
        top = start
    return mapping


class Fold32Source:
    """A trace source whose addresses are folded into 32 bits (see ``fold_map``)."""

    def __init__(self, source):
        from ..trace.base import open_trace

        self.src = open_trace(source)
        self.meta = {**dict(getattr(self.src, "meta", {}) or {}), "folded_to_32_bits": True}
        self._map: dict[int, int] | None = None

    def mapping(self) -> dict[int, int]:
        if self._map is None:
            regs = [np.zeros(0, np.uint64)]
            for ch in self.src.chunks():
                regs.append(_record_regions(ch))
            self._map = fold_map(np.unique(np.concatenate(regs)))
        return self._map

    def chunks(self, chunk_records: int = 1 << 20) -> Iterator[Trace]:
        m = self.mapping()
        keys = np.array(sorted(m), np.uint64)
        delta = np.array([(m[int(k)] - int(k)) for k in keys], np.int64)
        for ch in self.src.chunks(chunk_records):
            k = ch.kind
            sel = (k <= Kind.MODIFY) | (k == Kind.MMAP) | (k == Kind.MUNMAP) | (
                (k == Kind.BRK) & (ch.addr != 0))
            addr = ch.addr.copy()
            a = addr[sel]
            if len(a):
                idx = np.searchsorted(keys, a >> np.uint64(REGION_SHIFT))
                d = delta[np.minimum(idx, len(keys) - 1)]
                addr[sel] = (a.astype(np.int64) + (d << REGION_SHIFT)).astype(np.uint64)
            yield Trace(kind=k, addr=addr, size=ch.size, pid=ch.pid, icount=ch.icount,
                        repeat=ch.repeat, meta=ch.meta)


# ----------------------------------------------------------------------------- workloads
@dataclass
class Workload:
    name: str
    kind: str  # "spec-like", "microbenchmark" or "real"
    regime: str
    description: str
    synth: dict | None = None  # suite entry (generator, params)
    path: str | None = None  # captured trace
    info: dict = field(default_factory=dict)

    def source(self, levels: int):
        if self.synth is not None:
            from ..trace.synth import synthesize

            return synthesize(self.synth["generator"], **self.synth["params"])
        if levels <= 3:
            return Fold32Source(self.path)
        return self.path


def synthetic_workloads(scale: float = 1.0, quick: bool = False) -> list[Workload]:
    """The SPEC-like stand-ins of the realistic suite (``trace.synth.suite.spec_suite``:
    10^9 instructions, phased-like 6 x 10^9, times ``scale``) and the fork / mmap churn
    microbenchmarks.  ``quick``: the demo's subset (``demo_suite``: the same footprints and
    rates, 1.2 x 10^8 instructions) with phased-like at four phases of 1.5 x 10^8; the
    microbenchmarks are the same (short already, their warm-up ``MICRO_WARMUP``)."""
    from ..trace.synth.suite import demo_suite, microbenchmarks, spec_suite

    if not scale > 0:
        raise MemvirtError(f"scale must be > 0, got {scale}")
    spec = spec_suite()
    if quick:
        suite = {n: e for n, e in demo_suite(scale).items() if e["category"] == "spec-like"}
        ph = dict(spec["phased-like"]["params"])
        ph.update(phase_instructions=int(QUICK_PHASE_INSTRUCTIONS * scale),
                  instructions=int(4 * QUICK_PHASE_INSTRUCTIONS * scale))
        suite["phased-like"] = {**spec["phased-like"], "params": ph}
        micro = microbenchmarks(1.0)  # short already
    else:
        suite = {n: {**e, "params": {**e["params"],
                                     "instructions": int(e["params"]["instructions"] * scale),
                                     **({"phase_instructions": int(
                                         e["params"]["phase_instructions"] * scale)}
                                        if e["params"].get("phase_instructions") else {})}}
                 for n, e in spec.items()}
        micro = microbenchmarks(1.0)
    out = [Workload(n, "spec-like", e["regime"], e["description"],
                    synth={"generator": e["generator"], "params": dict(e["params"])})
           for n, e in suite.items()]
    out += [Workload(n, "microbenchmark", MICRO_REGIME, e.get("description", ""),
                     synth={"generator": e["generator"], "params": dict(e["params"])})
            for n, e in micro.items()]
    return out


def real_workloads(quick: bool = False, capture: bool = False, only=None,
                   log=None) -> list[Workload]:
    """The real-program suite (``memvirt workloads``): the programs already captured, or
    all that can be when ``capture``."""
    from .realistic import entries

    out = []
    for e in entries(quick=quick, capture=capture, synthetic=False, only=only, log=log):
        out.append(Workload(e.name, "real", "", f"real program ({e.name}; memvirt workloads "
                            f"info {e.name})", path=str(e.source),
                            info={"footprint_mib": e.footprint_mib,
                                  "processes": e.processes}))
    return out


# ----------------------------------------------------------------------------- running
def _row(workload: str, levels: int, label: str, res) -> dict:
    d = res.to_dict(samples=False)
    sel = d.get("selective") or {}
    frac = sel.get("time_fraction_in_mode", {})
    whole = d.get("whole_run") or {}
    return {
        "workload": workload, "levels": levels, "run": label, "mode": d["mode"],
        "policy": d.get("policy"), "cycles": d["cycles"], "time_s": d["time_s"],
        "instructions": d["instructions"], "records": d["records"],
        "whole_instructions": int(whole.get("instructions", d["instructions"])),
        "whole_cycles": float(whole.get("cycles", d["cycles"])),
        "tlb_misses": d["tlb_misses"], "guest_faults": d["guest_page_faults"]["total"],
        "tlb_misses_per_ki": d["rates"]["tlb_misses_per_ki"],
        "guest_faults_per_ki": d["rates"]["guest_faults_per_ki"],
        "vm_exits": d["vm_exits"]["total"], "walk_refs": d["walk_refs"],
        "switches": sel.get("switches", 0),
        "time_in_shadow": frac.get("shadow", 1.0 if d["mode"] == "shadow" else 0.0),
        "time_in_nested": frac.get("nested", 1.0 if d["mode"] == "nested" else 0.0),
        "cycles_breakdown": d["cycles_breakdown"],
    }


def run_workload(wl: Workload, config: dict, levels: int, period: int = POLICY_PERIOD,
                 policies=POLICIES, warmup: int = 0) -> list[dict]:
    """Every run of one workload on one guest: native, shadow, nested, selective/policy
    (dsp with the experiments' window, ``POLICY_WINDOW``; the others with their defaults)."""
    from ..api import simulate
    from ..policy.dsp import DspPolicy

    over = {"guest.levels": levels, "run.warmup_instructions": warmup,
            "selective.period_instructions": period}
    if wl.kind == "microbenchmark":
        from ..trace.synth.suite import MICRO_WARMUP

        over["run.warmup_instructions"] = min(warmup, MICRO_WARMUP)
    cfg = Config.from_dict(config).with_overrides(over)
    rows = []
    t0 = time.monotonic()
    src = wl.source(levels)
    for mode in ("native", *STATIC):
        rows.append(_row(wl.name, levels, mode, simulate(src, cfg, mode)))
    for pol in policies:
        obj = DspPolicy(cfg, window=POLICY_WINDOW) if pol == "dsp" else pol
        res = simulate(src, cfg, "selective", policy=obj)
        rows.append(_row(wl.name, levels, f"selective-{pol}", res))
    dt = time.monotonic() - t0
    for r in rows:
        r["job_seconds"] = round(dt, 2)
    return rows


def _job(args) -> list[dict]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dsp's short-window warning: the runs are long
        return run_workload(*args)


def normalize(rows: list[dict]) -> None:
    """Add ``normalized`` (cycles / better static mode's, steady state),
    ``whole_normalized`` (the same over the whole run) and ``normalized_to_native``."""
    by = {}
    for r in rows:
        by.setdefault((r["workload"], r["levels"]), {})[r["run"]] = r
    for runs in by.values():
        best = min(runs[m]["cycles"] for m in STATIC if m in runs)
        wbest = min(runs[m]["whole_cycles"] for m in STATIC if m in runs)
        nat = runs.get("native", {}).get("cycles")
        for r in runs.values():
            r["normalized"] = r["cycles"] / best if best else float("nan")
            r["whole_normalized"] = r["whole_cycles"] / wbest if wbest else float("nan")
            r["normalized_to_native"] = r["cycles"] / nat if nat else float("nan")


def run(out_dir=None, scale: float = 1.0, quick: bool = False, real: bool | None = None,
        profile: str = PROFILE, overrides=None, workers: int = 2, levels=LEVELS,
        policies=POLICIES, workloads: list[str] | None = None, capture: bool = False,
        log=None) -> dict:
    """Run the experiment; returns the results dict (and writes ``vee11.json``, the figures
    and the text table into ``out_dir`` when given).

    ``quick``: the demo-length stand-ins (``synthetic_workloads(quick=True)``) and no real
    programs unless ``real=True``; ``real=None`` means: the real programs already captured
    (``capture`` captures the others first) when not quick.  ``workloads`` restricts the
    workloads to those names."""
    t_start = time.monotonic()
    if real is None:
        real = not quick
    cfg = Config.load(None, overrides=overrides, profile=profile)
    out = Path(out_dir) if out_dir else None
    wls = [w for w in synthetic_workloads(scale, quick)
           if not workloads or w.name in workloads]
    timings: dict[str, float] = {}
    if real:
        t0 = time.monotonic()
        wls += real_workloads(quick=quick, capture=capture, only=workloads, log=log)
        timings["capture_s"] = round(time.monotonic() - t0, 2)
    from ..trace.synth.suite import DEMO_WARMUP

    period = POLICY_PERIOD
    warmup = DEMO_WARMUP if quick else WARMUP
    jobs = [(w, cfg.to_dict(), lv, period, tuple(policies), warmup) for w in wls
            for lv in levels]
    # Longest jobs first: the phased workload and the real traces, then the rest in order.
    jobs.sort(key=lambda j: 0 if j[0].regime == "phased" or j[0].kind == "real" else 1)
    t0 = time.monotonic()
    rows: list[dict] = []
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as ex:
            for i, part in enumerate(ex.map(_job, jobs)):
                rows += part
                if log:
                    log(f"done {jobs[i][0].name} ({jobs[i][2]}-level guest)")
    else:
        for j in jobs:
            rows += _job(j)
            if log:
                log(f"done {j[0].name} ({j[2]}-level guest)")
    timings["simulate_s"] = round(time.monotonic() - t0, 2)
    normalize(rows)
    order = {w.name: i for i, w in enumerate(wls)}
    rows.sort(key=lambda r: (order[r["workload"]], r["levels"]))
    timings["total_s"] = round(time.monotonic() - t_start, 2)
    results = {
        "experiment": "vee11",
        "profile": profile,
        "overrides": list(overrides or []),
        "scale": scale,
        "effective_scale": scale,
        "quick": quick,
        "levels": list(levels),
        "policies": list(policies),
        "period_instructions": period,
        "dsp_window_instructions": POLICY_WINDOW,
        "warmup_instructions": warmup,
        "workers": workers,
        "workloads": {w.name: {"kind": w.kind, "regime": w.regime,
                               "description": w.description,
                               **({"generator": w.synth["generator"],
                                   "params": w.synth["params"]} if w.synth else
                                  {"trace": w.path}),
                               **w.info} for w in wls},
        "rows": rows,
        "timings": timings,
    }
    results["checks"] = checks(results)
    if out is not None:
        write_outputs(results, out)
    return results


# ----------------------------------------------------------------------------- claims
def _runs(results: dict) -> dict:
    by: dict = {}
    for r in results["rows"]:
        by.setdefault(r["workload"], {}).setdefault(r["levels"], {})[r["run"]] = r
    return by


def checks(results: dict) -> list[dict]:
    """The study's qualitative claims, evaluated on these results (one entry per instance):

    1. fault-bound workloads run faster under nested paging;
    2. TLB-miss-bound workloads run faster under shadow paging;
    3. a 4-level guest narrows nested paging's advantage on fault-bound workloads
       (nested/shadow run-time ratio higher than with the 2-level guest);
    4. a 4-level guest widens shadow paging's advantage on TLB-bound workloads
       (the longer 2D walks: nested/shadow higher than with the 2-level guest);
    5. selective paging ends within 2% of the better static mode on every single-regime
       workload (fault- or TLB-bound, or neutral);
    6. on phased workloads selective paging beats both static modes.

    Claims 5 and 6 are the study's for its policy, dsp; memvirt's other policies (cost)
    are reported against them as information only (``informational``)."""
    by = _runs(results)
    regimes = {k: v["regime"] for k, v in results["workloads"].items()}
    out = []
    for wl, per_level in by.items():
        regime = regimes.get(wl)
        for lv, runs in sorted(per_level.items()):
            ratio = runs["nested"]["cycles"] / runs["shadow"]["cycles"]
            if regime in EXPECTED_WINNER:
                want = EXPECTED_WINNER[regime]
                holds = ratio < 1 if want == "nested" else ratio > 1
                out.append({"claim": f"{regime}-bound favours {want}", "workload": wl,
                            "levels": lv, "value": ratio, "metric": "nested/shadow",
                            "holds": bool(holds)})
            if regime in SINGLE_REGIME:
                for name, r in runs.items():
                    if name.startswith("selective-"):
                        out.append({"claim": "selective within 2% of the better static mode",
                                    "workload": wl, "levels": lv, "policy": name[10:],
                                    "value": r["normalized"], "metric": "run time / best static",
                                    "holds": bool(r["normalized"] <= 1 + SELECTIVE_TOLERANCE),
                                    "informational": name != "selective-dsp"})
            elif regime in ("phased", "phased-short"):
                for name, r in runs.items():
                    if name.startswith("selective-"):
                        out.append({"claim": "selective beats both static modes (phased)",
                                    "workload": wl, "levels": lv, "policy": name[10:],
                                    "value": r["normalized"], "metric": "run time / best static",
                                    "holds": bool(r["normalized"] < 1.0),
                                    "informational": regime == "phased-short"
                                    or name != "selective-dsp"})
        if regime in EXPECTED_WINNER and 2 in per_level and 4 in per_level:
            r2 = per_level[2]["nested"]["cycles"] / per_level[2]["shadow"]["cycles"]
            r4 = per_level[4]["nested"]["cycles"] / per_level[4]["shadow"]["cycles"]
            claim = ("4-level guest narrows nested's advantage" if regime == "fault"
                     else "4-level guest widens shadow's advantage")
            out.append({"claim": claim, "workload": wl, "levels": "2->4",
                        "value": r4 - r2, "metric": "change of nested/shadow",
                        "ratio_2": r2, "ratio_4": r4, "holds": bool(r4 > r2)})
    return out


# ----------------------------------------------------------------------------- output
RUN_ORDER = ("shadow", "nested", "selective-dsp", "selective-cost")
YCAP = 3.0  # the normalised-run-time figure cuts bars above this (their labels say the value)
RUN_COLORS = {"native": "#999999", "shadow": "#d62728", "nested": "#1f77b4",
              "selective-dsp": "#2ca02c", "selective-cost": "#9467bd"}


def table(results: dict, wide: bool = True):
    """A rich table: per workload and guest, the run time of each run normalised to the
    better static mode, and for the selective runs the switches and the share of time in
    shadow paging.  ``wide`` adds the regime, the miss and fault rates and the winner."""
    from rich import box
    from rich.table import Table

    pols = [f"selective-{p}" for p in results["policies"]]
    t = Table(title=f"vee11 on {results['profile']}: run time / better static mode, steady "
                    f"state after {results.get('warmup_instructions', 0):,} instructions "
                    f"(scale {results['effective_scale']:g}, period "
                    f"{results['period_instructions']:,} instr.)", box=box.SIMPLE_HEAD,
              caption="sw, %SP: mode switches and share of run time in shadow paging; "
                      "SP/HAP: shadow over nested cycles, steady and whole run; instr.: "
                      "whole run")
    t.add_column("workload")
    if wide:
        t.add_column("regime")
    t.add_column("guest", justify="right")
    if wide:
        t.add_column("instr.", justify="right")
        t.add_column("footprint", justify="right")
        t.add_column("procs", justify="right")
        t.add_column("TLB miss/KI", justify="right")
        t.add_column("faults/KI", justify="right")
        t.add_column("SP/HAP", justify="right")
        t.add_column("SP/HAP whole", justify="right")
    for name in ("shadow", "nested", *pols):
        t.add_column(name.replace("selective-", ""), justify="right")
    for p in pols:
        t.add_column(f"{p.replace('selective-', '')} sw, %SP", justify="right")
    if wide:
        t.add_column("winner")
    by = _runs(results)
    for wl, per_level in by.items():
        regime = results["workloads"][wl]["regime"]
        for lv, runs in sorted(per_level.items()):
            s, n = runs["shadow"], runs["nested"]
            cells = [wl] + ([regime] if wide else []) + [f"{lv}L"]
            if wide:
                w = results["workloads"][wl]
                fp = w.get("footprint_mib", (w.get("params") or {}).get("footprint_mib"))
                procs = w.get("processes", 1 if w["kind"] == "spec-like" else None)
                cells += [f"{s['whole_instructions'] / 1e9:.2f} G",
                          "-" if fp is None else f"{fp:.0f} MiB",
                          "-" if procs is None else str(procs),
                          f"{s['tlb_misses_per_ki']:.2f}", f"{s['guest_faults_per_ki']:.3f}",
                          f"{s['cycles'] / n['cycles']:.3f}",
                          f"{s['whole_cycles'] / n['whole_cycles']:.3f}"]
            for name in ("shadow", "nested", *pols):
                x = runs[name]["normalized"]
                cells.append(f"[bold]{x:.3f}[/bold]" if x <= 1.0 + 1e-12 else f"{x:.3f}")
            for p in pols:
                r = runs[p]
                cells.append(f"{r['switches']}, {100 * r['time_in_shadow']:.0f}%")
            if wide:
                cells.append("shadow" if s["cycles"] < n["cycles"] else "nested")
            t.add_row(*cells)
    return t


CLAIM_LABELS = {
    "fault-bound favours nested": "nested wins",
    "tlb-bound favours shadow": "shadow wins",
    "selective within 2% of the better static mode": "{p} <= 1.02 x best",
    "selective beats both static modes (phased)": "{p} beats both",
    "4-level guest narrows nested's advantage": "4L narrows HAP lead",
    "4-level guest widens shadow's advantage": "4L widens SP lead",
}


def checks_table(results: dict):
    """The claims of ``checks``, one row per claim and workload, one column per guest."""
    from rich import box
    from rich.table import Table

    t = Table(title="the study's qualitative results", box=box.SIMPLE_HEAD,
              caption="values: nested/shadow run time (who wins, guest depth) or selective "
                      "run time / best static; (i): informational only")
    t.add_column("claim")
    t.add_column("workload")
    levels = [lv for lv in results["levels"]]
    for lv in levels:
        t.add_column(f"{lv}-level guest", justify="right")
    rows: dict = {}
    for c in results["checks"]:
        label = CLAIM_LABELS.get(c["claim"], c["claim"]).format(p=c.get("policy", ""))
        row = rows.setdefault((label, c["workload"]), {})
        mark = "ok" if c["holds"] else ("no (i)" if c.get("informational") else "NO")
        if c["levels"] == "2->4":
            row[2] = f"{c['ratio_2']:.4f}"
            row[4] = f"{c['ratio_4']:.4f} {mark}"
        else:
            row[c["levels"]] = f"{c['value']:.3f} {mark}"
    for (label, wl), row in rows.items():
        t.add_row(label, wl, *(row.get(lv, "") for lv in levels))
    return t


def plot(results: dict, out_dir: Path) -> list[Path]:
    """``vee11_normalized.png`` (bars like the study's normalized run time figure, one panel
    per guest) and ``vee11_modes.png`` (time share in each mode of the selective runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = _runs(results)
    names = list(by)
    levels = results["levels"]
    runs = [r for r in RUN_ORDER if r.replace("selective-", "") in results["policies"]
            or not r.startswith("selective-")]
    paths = []
    fig, axes = plt.subplots(len(levels), 1, figsize=(max(8, 1.25 * len(names) + 2),
                                                       3.4 * len(levels)), squeeze=False)
    w = 0.8 / len(runs)
    for ax, lv in zip(axes[:, 0], levels):
        top = 1.0
        for j, run in enumerate(runs):
            xs, ys = [], []
            for i, wl in enumerate(names):
                if lv in by[wl] and run in by[wl][lv]:
                    xs.append(i + (j - (len(runs) - 1) / 2) * w)
                    ys.append(by[wl][lv][run]["normalized"])
            shown = [min(y, YCAP) for y in ys]  # bars above YCAP are cut, labelled in full
            bars = ax.bar(xs, shown, w * 0.92, label=run, color=RUN_COLORS.get(run))
            for b, y in zip(bars, ys):
                ax.annotate(f"{y:.2f}", (b.get_x() + b.get_width() / 2, min(y, YCAP)),
                            ha="center", va="bottom", fontsize=6, rotation=90, xytext=(0, 2),
                            textcoords="offset points")
            top = max([top, *shown])
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xticks(range(len(names)), names)
        ax.set_ylim(0, top * 1.2)
        ax.set_ylabel(f"run time / better static (bars cut at {YCAP:g})")
        ax.set_title(f"{lv}-level guest ({'32' if lv == 2 else '64'}-bit), "
                     f"{results['profile']}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(ncols=len(runs), fontsize=7, loc="upper right")
    fig.tight_layout()
    p = out_dir / "vee11_normalized.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)

    pols = [f"selective-{p}" for p in results["policies"]]
    fig, axes = plt.subplots(1, len(levels), figsize=(max(8, 1.1 * len(names) * len(levels)),
                                                      3.6), squeeze=False)
    w = 0.8 / max(1, len(pols))
    for ax, lv in zip(axes[0], levels):
        for j, pol in enumerate(pols):
            xs, sh, ne, sw = [], [], [], []
            for i, wl in enumerate(names):
                r = by[wl].get(lv, {}).get(pol)
                if r:
                    xs.append(i + (j - (len(pols) - 1) / 2) * w)
                    sh.append(r["time_in_shadow"])
                    ne.append(r["time_in_nested"])
                    sw.append(r["switches"])
            ax.bar(xs, sh, w * 0.92, color=RUN_COLORS["shadow"], edgecolor="black", lw=0.3,
                   hatch="" if j == 0 else "//", label=f"{pol}: shadow")
            ax.bar(xs, ne, w * 0.92, bottom=sh, color=RUN_COLORS["nested"], edgecolor="black",
                   lw=0.3, hatch="" if j == 0 else "//", label=f"{pol}: nested")
            for x, n in zip(xs, sw):
                ax.annotate(str(n), (x, 1.0), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylim(0, 1.15)
        ax.set_ylabel("share of run time (numbers: switches)")
        ax.set_title(f"selective paging, {lv}-level guest")
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    p = out_dir / "vee11_modes.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)
    return paths


def write_outputs(results: dict, out_dir: Path) -> list[Path]:
    from rich.console import Console

    out_dir.mkdir(parents=True, exist_ok=True)
    j = out_dir / "vee11.json"
    j.write_text(json.dumps(results, indent=1, default=float))
    paths = [j, *plot(results, out_dir)]
    txt = out_dir / "vee11.txt"
    with open(txt, "w") as f:
        con = Console(file=f, width=200, color_system=None)
        con.print(table(results, wide=True))
        con.print(checks_table(results))
    paths.append(txt)
    results.setdefault("outputs", [str(p) for p in paths])
    return paths


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


__all__ = ["Fold32Source", "Workload", "checks", "checks_table", "fold_map", "plot",
           "real_workloads", "run", "run_workload", "synthetic_workloads", "table",
           "write_outputs"]
