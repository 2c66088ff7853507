"""The built-in workload suite used by the demo: one workload per regime.

``default_suite(scale)`` maps a workload name to ``{"generator": NAME, "params": {...},
"description": TEXT}``; ``synthesize(entry["generator"], **entry["params"])`` (or
``build_workload(entry)``) makes its trace.  At ``scale=1.0`` each workload has about
4.5 M records (about 15 M instructions); ``scale=0.05`` gives a tiny suite for tests.

Sizes are chosen so that each workload shows its regime within that length: the chase
footprint is small enough that its warm-up faults are few next to the TLB misses that
follow (about 2,200 misses per page), the compute footprint small enough that its first
touches hardly count, and ``phases`` is three times longer than the others: its four
phases are about 3.4 M records (~12 M instructions) each, long enough to repay a shadow
refill, and a switching policy needs a sampling period well below that (the demo uses
1 M instructions) to follow them.  Only the record counts (and
the number of compile children and stream arrays' size) scale; at small scales the
regimes blur because the warm-up weighs more.
"""

from __future__ import annotations

from ..records import Trace

RECORDS = 4_500_000  # records per workload at scale 1.0

_MIN_RECORDS = 20_000


def _records(scale: float) -> int:
    return max(_MIN_RECORDS, int(round(RECORDS * scale)))


def default_suite(scale: float = 1.0) -> dict[str, dict]:
    """Workload name -> {"generator", "params", "description"} for the demo suite."""
    if not scale > 0:
        from ...errors import MemvirtError

        raise MemvirtError(f"suite scale must be > 0, got {scale!r}")
    n = _records(scale)
    return {
        "chase": {
            "generator": "chase",
            "params": {"records": n, "footprint_mib": 8.0, "span_mib": 1024.0, "per_node": 1,
                       "seed": 11},
            "description": "pointer chase over 8 MiB scattered across 1 GiB: TLB-miss bound "
                           "(mcf); shadow paging should win",
        },
        "compile": {
            "generator": "compile",
            "params": {"records": n, "processes": max(3, int(round(30 * scale))),
                       "heap_mib": 2.0, "mmaps": 2, "seed": 12},
            "description": "a driver forking short-lived children that grow fresh heaps: "
                           "guest-page-fault bound (gcc); nested paging should win",
        },
        "stream": {
            "generator": "stream",
            "params": {"records": n, "footprint_mib": max(6.0, round(96 * scale, 2)),
                       "arrays": 3, "stride": 64, "seed": 13},
            "description": "STREAM sweeps over three arrays: faults in the first sweep, then "
                           "cheap sequential TLB misses",
        },
        "churn": {
            "generator": "churn",
            "params": {"records": n, "block_mib": 4.0, "touches": 16, "seed": 14},
            "description": "mmap / touch every page / munmap, repeated: fault and PTE-write "
                           "bound; nested paging should win by far",
        },
        "phases": {
            "generator": "phases",
            # three times the others' length: phases of ~12 M instructions, long enough to
            # repay a shadow refill at the calibrated (Nehalem/Xen) costs
            "params": {"records": 3 * n, "phases": 4, "footprint_mib": 4.0, "span_mib": 1024.0,
                       "per_node": 1, "fault_style": "churn", "block_mib": 1.0,
                       "touches": 512, "seed": 15},
            "description": "alternating chase (TLB-bound) and churn (fault-bound) phases: "
                           "dynamic switching should beat both static modes",
        },
        "compute": {
            "generator": "compute",
            "params": {"records": n, "footprint_mib": 1.0, "ipr": 8.0, "seed": 16},
            "description": "1 MiB footprint with locality, 8 instructions per access: few TLB "
                           "misses and faults; the two modes should nearly tie",
        },
    }


def build_workload(entry: dict) -> Trace:
    """The trace of one suite entry (its name is recorded as ``meta["name"]`` if given)."""
    from . import synthesize

    tr = synthesize(entry["generator"], **entry.get("params", {}))
    if "name" in entry:
        tr.meta.setdefault("name", entry["name"])
    return tr


# ----------------------------------------------------------------------------- SPEC-like
# SPEC CPU2006 stand-ins (the ``spec`` generator): realistic lengths (10^9 instructions and
# more), rates inside what the selective-paging study measured on SPEC CPU2006 INT (0.02-16
# TLB misses and 0-0.015 guest page faults per 1,000 instructions, whole runs), start-up
# included.  Footprints are sized so that the first touches of start-up stay inside that
# fault range at the default length.  ``quick`` variants (10^8 instructions, footprints /10)
# are for tests; their start-up weighs ten times more, so their rates are not SPEC-like.
SPEC_INSTRUCTIONS = 1_000_000_000

SPEC_LIKE: dict[str, tuple[str, dict, str]] = {
    # name: (regime, spec parameters, description)
    "mcf-like": ("tlb", dict(footprint_mib=48.0, cold_pki=12.0, seed=21),
                 "random loads over 48 MiB, 12 per 1,000 instructions: TLB-miss bound "
                 "(429.mcf); shadow paging should win"),
    "omnetpp-like": ("tlb", dict(footprint_mib=32.0, cold_pki=5.0, seed=22),
                     "random accesses over 32 MiB, 5 per 1,000 instructions: TLB-miss heavy "
                     "(471.omnetpp, 483.xalancbmk)"),
    "gcc-like": ("fault", dict(footprint_mib=16.0, cold_pki=1.0, churn_pki=0.01, seed=23),
                 "a heap that keeps mapping and touching fresh memory (0.01 faults per "
                 "1,000 instructions) and unmapping old blocks: guest-page-fault bound "
                 "(403.gcc); nested paging should win"),
    "libquantum-like": ("neutral", dict(footprint_mib=48.0, pattern="sequential", stride=64,
                                        cold_pki=32.0, seed=24),
                        "sequential sweeps over 48 MiB, a cache line apart: one TLB miss per "
                        "64 accesses (462.libquantum)"),
    "bzip2-like": ("neutral", dict(footprint_mib=8.0, cold_pki=0.3, seed=25),
                   "8 MiB worked on with good locality: few TLB misses and faults "
                   "(401.bzip2); the two modes should nearly tie"),
    "h264ref-like": ("neutral", dict(footprint_mib=6.0, cold_pki=0.06, ipr=6.0, seed=26),
                     "a small footprint and compute-heavy code: almost no misses "
                     "(464.h264ref); the two modes should tie"),
    "phased-like": ("phased", dict(footprint_mib=24.0, cold_pki=12.0, cold_pki_b=1.0,
                                   churn_pki_b=0.025, phase_instructions=1_500_000_000,
                                   instructions=6_000_000_000, seed=27),
                    "four phases of 1.5 x 10^9 instructions, alternating mcf-like TLB misses "
                    "and gcc-like fresh-page faults: dynamic switching should beat both "
                    "static modes"),
}

MICROBENCHMARKS = ("churn", "compile")  # far beyond SPEC's rates on purpose
# The microbenchmarks are churn from their first instructions (1.6-3 x 10^7 of them): their
# warm-up only covers the first process's start, not 10^7-10^8 instructions as the
# stand-ins' and real programs' do.
MICRO_WARMUP = 1_000_000


def spec_suite(quick: bool = False) -> dict[str, dict]:
    """SPEC-like stand-ins: name -> {"generator": "spec", "params", "description",
    "regime", "category": "spec-like"}.  ``quick``: 1/10 of the length and footprint."""
    out = {}
    for name, (regime, params, desc) in SPEC_LIKE.items():
        p = {"instructions": SPEC_INSTRUCTIONS, **params}
        if quick:
            p["instructions"] = p["instructions"] // 10
            p["footprint_mib"] = p["footprint_mib"] / 10
            if "phase_instructions" in p:
                p["phase_instructions"] = p["phase_instructions"] // 10
        out[name] = {"generator": "spec", "params": p, "description": desc,
                     "regime": regime, "category": "spec-like"}
    return out


# How the experiments (vee11, realistic) and the demo run selective paging.  The study
# sampled every 5 s over runs of 100-1,000 s (20-200 periods); the stand-ins and captured
# programs are 10^8-10^9 instructions, 100-1,000 times shorter.  So dsp judges windows of
# 10^7 instructions (ten 10^6-instruction periods), not its library default of 10^9 (ten
# faults at PFL): with that default, the start-up's first-touch faults stayed in its window
# for the whole of a 10^9 run and it never left its start mode.  The price: one fault in a
# window is 10x PFL, so rates at PFL are not resolved (docs/policies.md).
POLICY_WINDOW = 10_000_000
POLICY_PERIOD = 1_000_000

# The demo's prepared subset (``memvirt demo``): the SPEC-like stand-ins with their
# full-length footprints, patterns and rates, only shorter.  Its warm-up (not counted) holds
# the start-up (first touches: a few 10^4 instructions), the policy's settling (a window,
# its history of three more, then a shadow refill of the footprint) and cold TLBs and
# caches, so the steady state is the full runs' steady state: tests/test_demo_subset.py
# holds each workload's steady SP/HAP and dsp to the full-length runs'
# (tests/data/realistic-spec-full.json).
DEMO_INSTRUCTIONS = 120_000_000
DEMO_WARMUP = 60_000_000
DEMO_PROFILE = "nehalem-2010"  # as the full-length runs of the stand-ins (the study's machine)
DEMO_LEVELS = 2  # the study's 32-bit guests
DEMO_SKIP = ("phased-like",)  # phases of 1.5 x 10^9 instructions: nothing short repays them


def demo_suite(scale: float = 1.0) -> dict[str, dict]:
    """The demo's workloads: the SPEC-like stand-ins (but ``DEMO_SKIP``) at
    ``DEMO_INSTRUCTIONS * scale`` instructions (with ``category``).  The microbenchmarks
    (``memvirt experiment realistic``) are not in it: their 1.6-3 x 10^7 instructions are
    shorter than the demo's warm-up."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    out = {}
    for name, e in spec_suite().items():
        if name in DEMO_SKIP:
            continue
        params = {**e["params"], "instructions": max(1_000_000,
                                                     int(DEMO_INSTRUCTIONS * scale))}
        out[name] = {**e, "params": params}
    return out


def microbenchmarks(scale: float = 1.0) -> dict[str, dict]:
    """Fork and mmap churn, named and reported as microbenchmarks (rates far above SPEC's)."""
    suite = default_suite(scale)
    return {f"{n}-micro": {**suite[n], "category": "microbenchmark"} for n in MICROBENCHMARKS}
