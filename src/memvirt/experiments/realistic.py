"""The realistic suite: real programs and SPEC-like stand-ins at real lengths, in every mode.

Per workload: its length, footprint, processes, TLB misses and guest faults per 1,000
instructions (native, steady state), shadow over nested cycles (SP/HAP) in the steady state
and over the whole run, and selective paging (dsp sampled every ``POLICY_PERIOD``
instructions over windows of ``POLICY_WINDOW``: ``trace.synth.suite``) against the better
static mode (the study's 2-level guest for the synthetic workloads; the captured programs, x86-64
processes, on a 4-level guest).  The steady state starts after ``warmup`` instructions (memvirt's warm-up: those
records run but are not counted, see docs/workloads.md); the whole run includes them.

Workloads: the real-program suite (``memvirt workloads``; only those already captured unless
``capture=True``), the SPEC-like stand-ins of ``trace.synth.suite.spec_suite`` and the fork /
mmap churn microbenchmarks (named as such).  ``quick`` uses the short variants (tests).

With ``agile``: agile paging too (4-level guests only: the paper's x86-64; ``agile_markdown``
gives its table: agile against shadow, nested, selective and native, and its moves).

``memvirt experiment realistic [--quick] [--levels 2 4] [--agile] [--markdown]``.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

MODES = ("native", "shadow", "nested", "selective")
PROFILE = "nehalem-2010"
WARMUP = 100_000_000  # instructions: start-up (loading, first touches) stays out of steady
QUICK_WARMUP = 10_000_000
REAL_LEVELS = 4  # captured x86-64 programs: 48-bit addresses


@dataclass(frozen=True)
class Entry:
    name: str
    category: str  # real | spec-like | microbenchmark
    source: object  # a path or a synth spec (generator, params)
    regime: str = ""
    footprint_mib: float | None = None
    processes: int | None = None


def entries(quick: bool = False, capture: bool = False, real: bool = True,
            synthetic: bool = True, only=None, log=None) -> list[Entry]:
    out: list[Entry] = []
    if real:
        from .. import workloads as wl

        for name in wl.suite():
            if only and name not in only:
                continue
            st = wl.status(name, quick=quick)
            if not (st.get("captured") or capture):
                if log:
                    log(f"{name}: skipped ({st.get('state', 'not captured')})")
                continue
            try:
                path = wl.ensure(name, quick=quick)
            except wl.WorkloadError as e:
                if log:
                    log(f"{name}: skipped ({e})")
                continue
            if not st.get("captured"):  # captured just now: its statistics are new
                st = wl.status(name, quick=quick)
            out.append(Entry(name, "real", str(path), "", st.get("footprint_mib"),
                             st.get("processes")))
    if synthetic:
        from ..trace.synth.suite import microbenchmarks, spec_suite

        for name, e in spec_suite(quick).items():
            if not only or name in only:
                out.append(Entry(name, "spec-like", (e["generator"], e["params"]), e["regime"],
                                 e["params"].get("footprint_mib"), 1))
        for name, e in microbenchmarks(1.0).items():  # short already (MICRO_WARMUP)
            if not only or name in only:
                out.append(Entry(name, "microbenchmark", (e["generator"], e["params"])))
    return out


def _open(entry: Entry):
    if isinstance(entry.source, tuple):
        from ..trace.synth import synthesize

        gen, params = entry.source
        return synthesize(gen, **params)
    return entry.source


def _run_one(job) -> dict:
    """All four modes of one workload at one guest width (one worker)."""
    import warnings

    from ..api import simulate
    from ..config import Config
    from ..counters import INSTR
    from ..trace.synth.suite import POLICY_PERIOD, POLICY_WINDOW

    entry, levels, warmup, *more = job
    modes = MODES + (("agile",) if more and more[0] else ())
    if entry.category == "microbenchmark":
        from ..trace.synth.suite import MICRO_WARMUP

        warmup = min(warmup, MICRO_WARMUP)
    cfg = Config.load(profile=PROFILE).with_overrides(
        {"guest.levels": levels, "run.warmup_instructions": warmup,
         "selective.period_instructions": POLICY_PERIOD,
         "selective.policy_params": {"window": POLICY_WINDOW}})
    res = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dsp's window warnings: reported per run below
        for mode in modes:
            res[mode] = simulate(_open(entry), cfg, mode)
    nat = res["native"].to_dict(samples=False)
    steady = {m: r.cycles for m, r in res.items()}
    whole = {m: r.to_dict(samples=False)["whole_run"]["cycles"] for m, r in res.items()}
    better = min(steady["shadow"], steady["nested"])
    sel = res["selective"].selective or {}
    return {
        "workload": entry.name, "category": entry.category, "regime": entry.regime,
        "levels": levels,
        "instructions": int(res["native"].whole[INSTR]),
        "steady_instructions": int(res["native"].counters[INSTR]),
        "footprint_mib": entry.footprint_mib,
        "processes": entry.processes,
        "tlb_misses_per_ki": nat["rates"]["tlb_misses_per_ki"],
        "faults_per_ki": nat["rates"]["guest_faults_per_ki"],
        "sp_hap_steady": steady["shadow"] / steady["nested"],
        "sp_hap_whole": whole["shadow"] / whole["nested"],
        "dsp_vs_best": steady["selective"] / better,
        "dsp_switches": int(sel.get("switches", 0)),
        "cycles_steady": steady, "cycles_whole": whole,
        **(_agile_figures(res, steady, whole) if "agile" in res else {}),
    }


def _agile_figures(res, steady, whole) -> dict:
    from .. import counters as K

    best = min(steady["shadow"], steady["nested"])
    c = res["agile"].counters
    return {"agile_vs_best": steady["agile"] / best,
            "agile_vs_selective": steady["agile"] / steady["selective"],
            "agile_vs_native": steady["agile"] / steady["native"],
            "best_vs_native": best / steady["native"],
            "agile_vs_best_whole": whole["agile"] / min(whole["shadow"], whole["nested"]),
            "agile_to_nested": int(res["agile"].whole[K.AGILE_TO_NESTED]),
            "agile_to_shadow": int(res["agile"].whole[K.AGILE_TO_SHADOW]),
            "agile_exits_per_ki": K.exits_total(c) * 1000 / max(1, int(c[K.INSTR])),
            "agile_walk_refs_per_walk": int(c[K.WALK_REFS]) / max(1, int(c[K.WALKS]))}


def run(quick: bool = False, levels=(2,), workers: int | None = None, capture: bool = False,
        real: bool = True, synthetic: bool = True, only=None, log=None,
        agile: bool = False) -> dict:
    ents = entries(quick, capture, real, synthetic, only, log)
    warmup = QUICK_WARMUP if quick else WARMUP
    if agile and min(levels) < 3:
        from ..errors import ConfigError

        raise ConfigError("agile paging is modelled for 64-bit guests: run it with --levels 4")
    # The real programs are x86-64 processes: their addresses need a 4-level guest.
    jobs = [(e, lv, warmup, agile) for e in ents
            for lv in (sorted({max(lv, REAL_LEVELS) for lv in levels}) if e.category == "real"
                       else levels)]
    workers = max(1, min(workers or (os.cpu_count() or 1), len(jobs) or 1))
    rows = []
    if workers == 1:
        for j in jobs:
            rows.append(_run_one(j))
            if log:
                log(f"{j[0].name} ({j[1]}-level): done")
    else:
        with ProcessPoolExecutor(workers) as pool:
            for j, row in zip(jobs, pool.map(_run_one, jobs)):
                rows.append(row)
                if log:
                    log(f"{j[0].name} ({j[1]}-level): done")
    return {"experiment": "realistic", "profile": PROFILE, "quick": quick,
            "warmup_instructions": warmup, "levels": list(levels), "agile": agile,
            "rows": rows}


def agile_markdown(results: dict) -> str:
    """Agile paging against the other modes (``run(agile=True)``), as printed."""
    from ..policy.agile import SCAN_INSTRUCTIONS

    lines = [f"Profile `{results['profile']}`, 4-level guests, warm-up "
             f"{results['warmup_instructions']:,} instructions"
             f"{' (quick variants)' if results['quick'] else ''}; agile with the paper's "
             f"policy (scans every {SCAN_INSTRUCTIONS:,} instructions). Cycles over the "
             "better static mode (best), selective paging (dsp) and native, steady state; "
             "below 1: agile paging is faster.", "",
             "| workload | kind | instructions | SP/HAP | best / native | dsp / best "
             "| agile / best | agile / dsp | agile / native | agile / best, whole run "
             "| to nested | to shadow | exits /KI | refs / walk |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        if "agile_vs_best" not in r:
            continue
        lines.append(
            f"| {r['workload']} | {r['category']} | {r['instructions'] / 1e9:.2f} G "
            f"| {r['sp_hap_steady']:.3f} | {r['best_vs_native']:.3f} "
            f"| {r['dsp_vs_best']:.3f} | {r['agile_vs_best']:.3f} "
            f"| {r['agile_vs_selective']:.3f} | {r['agile_vs_native']:.3f} "
            f"| {r['agile_vs_best_whole']:.3f} | {r['agile_to_nested']:,} "
            f"| {r['agile_to_shadow']:,} | {r['agile_exits_per_ki']:.3g} "
            f"| {r['agile_walk_refs_per_walk']:.2f} |")
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    """The table of the docs (docs/workloads-real.md), as printed."""
    from ..trace.synth.suite import POLICY_PERIOD, POLICY_WINDOW

    lines = [f"Profile `{results['profile']}`, warm-up {results['warmup_instructions']:,} "
             f"instructions{' (quick variants)' if results['quick'] else ''}. Rates: native, "
             "steady state. SP/HAP: shadow over nested cycles (below 1: shadow paging wins). "
             "dsp: selective paging over the better static mode, steady state (sampled "
             f"every {POLICY_PERIOD:,} instructions, windows of {POLICY_WINDOW:,}).", "",
             "| workload | kind | guest | instructions | footprint MiB | processes "
             "| TLB misses /KI | faults /KI | SP/HAP steady | SP/HAP whole run | dsp / best "
             "| switches |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(
            f"| {r['workload']} | {r['category']} | {r['levels']}-level "
            f"| {r['instructions'] / 1e9:.2f} G "
            f"| {'-' if r['footprint_mib'] is None else format(r['footprint_mib'], '.0f')} "
            f"| {r['processes'] if r['processes'] is not None else '-'} "
            f"| {r['tlb_misses_per_ki']:.3g} | {r['faults_per_ki']:.3g} "
            f"| {r['sp_hap_steady']:.3f} | {r['sp_hap_whole']:.3f} | {r['dsp_vs_best']:.3f} "
            f"| {r['dsp_switches']} |")
    return "\n".join(lines) + "\n"
