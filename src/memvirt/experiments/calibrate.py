"""Calibration micro-workloads: the marginal cost of one event under shadow and nested paging.

Each micro-workload is a ``Trace`` built here, in two versions that share the same first
part: a *warm-only* trace (set up the state: map and touch the footprint, start the
processes) and a *warm+measure* trace (the same, then many repetitions of the one event
being measured).  Running both under a mode and subtracting removes everything the warm-up
costs (first-touch faults, host backing, building the shadow), so what is left is the cost
of the measured events alone, in cycles of the cost model::

    per_event[mode] = (cycles(warm+measure) - cycles(warm)) / events

``events`` is counted by the simulator itself in the same difference (STLB misses, guest
page faults, CR3 loads, forks).  The *marginal* cost is the difference between the modes,
signed the way the study published it:

======================  ===========================  ==============================
event                   marginal                     published (VEE 2011, Table 3)
======================  ===========================  ==============================
``tlb_miss``            nested - shadow, per miss    ~12 cycles (4.3 ns) at 2.8 GHz
                        (32 MiB footprint)
``tlb_miss_large``      the same, 800 MiB footprint  ~12 cycles: mcf's footprint is large
``tlb_miss_mcf``        the same, mcf-like accesses  ~12 cycles: the study's figure is mcf's
                        (24 MiB of nodes, 768 MiB
                        of arcs)
``guest_fault``         shadow - nested, per fault   ~27,000 cycles (9.8 us)
``context_switch``      shadow - nested, per switch  (not published)
``fork``                shadow - nested, per fork    (not published)
======================  ===========================  ==============================

The published figures come from whole SPEC runs on a 32-bit guest (mcf: 54 s more under
nested paging over 12.5 G TLB misses; gcc: 131 s more under shadow paging over 13.3 M
guest faults), so the workloads default to a 2-level guest (``levels=2``).

The measurement functions (``measure``, ``measure_all``) take a ``Config`` and return
plain data, so tests recompute them from ``simulate()`` runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .. import counters as K
from ..api import simulate
from ..config import Config
from ..errors import MemvirtError
from ..trace.records import Kind, Trace

PAGE = 4096
MIB = 1 << 20
REGION = 0x1000_0000  # the measured footprint (anonymous mmap)
CHURN = 0x2000_0000  # the churn block
HEAP = 0x0100_0000  # small per-process working sets (context switch, fork)
STUDY_LEVELS = 2  # the study's guests were 32-bit (Linux 2.6.18, non-PAE: 2-level tables)

# Published figures (reference section 2): derived from Table 3 of Wang et al., VEE 2011.
PUBLISHED = {
    "tlb_miss": {"cycles": 12.0, "ns": 4.3, "direction": "nested - shadow",
                 "source": "VEE 2011 Table 3, mcf: (383 s - 329 s) / 12.5e9 TLB misses"},
    "tlb_miss_large": {"cycles": 12.0, "ns": 4.3, "direction": "nested - shadow",
                       "source": "VEE 2011 Table 3, mcf (a ~1.7 GB footprint): (383 s - 329 s) "
                                 "/ 12.5e9 TLB misses"},
    "tlb_miss_mcf": {"cycles": 12.0, "ns": 4.3, "direction": "nested - shadow",
                     "source": "VEE 2011 Table 3, mcf: (383 s - 329 s) / 12.5e9 TLB misses; "
                               "here an mcf-like access pattern"},
    "guest_fault": {"cycles": 27_000.0, "ns": 9_800.0, "direction": "shadow - nested",
                    "source": "VEE 2011 Table 3, gcc: (534 s - 403 s) / 13.3e6 guest faults"},
}

# Which counter counts the event, and which mode pays the premium.
EVENTS = {
    "tlb_miss": {"counter": K.STLB_MISS, "sign": +1,
                 "what": "STLB miss (random reads over a warm footprint 16x the STLB reach)"},
    "tlb_miss_large": {"counter": K.STLB_MISS, "sign": +1,
                       "what": "STLB miss (random reads over a warm 800 MiB footprint)"},
    "tlb_miss_mcf": {"counter": K.STLB_MISS, "sign": +1,
                     "what": "STLB miss (429.mcf-like: strided arc scans and random node and "
                             "arc dereferences over a warm ~790 MiB footprint)"},
    "guest_fault": {"counter": None, "sign": -1,
                    "what": "guest demand fault (mmap / touch each page once / munmap churn)"},
    "context_switch": {"counter": K.CR3_LOADS, "sign": -1,
                       "what": "context switch between two warm processes (CR3 load)"},
    "fork": {"counter": K.FORKS, "sign": -1,
             "what": "fork + one copy-on-write fault + exit of a child (with its 2 switches)"},
}
TOLERANCE = 0.15  # calibration target: within 15% of the published figure
LARGE_FOOTPRINT_MIB = 800.0  # the study's TLB-bound program (mcf) had a large footprint
# 429.mcf (SPEC CPU2006), 32-bit build: sizeof(node_t) and sizeof(arc_t) with 4-byte longs
# and pointers, and the pricing group size of pbeampp.c (K = 300 arcs per group)
MCF_NODE_BYTES, MCF_ARC_BYTES, MCF_GROUP = 60, 32, 300


# ----------------------------------------------------------------------------- trace pieces
def _acc(addrs, kind=Kind.LOAD, icount=1, pid=1) -> Trace:
    addrs = np.asarray(addrs, np.int64)
    n = len(addrs)
    return Trace(kind=np.full(n, int(kind), np.uint8), addr=addrs.astype(np.uint64),
                 size=np.full(n, 8, np.uint64), pid=np.full(n, pid, np.int64),
                 icount=np.full(n, icount, np.uint32))


def _ev(kind, addr=0, size=0, pid=1) -> Trace:
    return Trace.from_records([(int(kind), addr, size, pid, 0)])


def _pages(base: int, n: int) -> np.ndarray:
    return base + np.arange(n, dtype=np.int64) * PAGE


@dataclass
class MicroWorkload:
    """A warm-only trace and the same warm-up followed by the measured events."""

    name: str
    warm: Trace
    full: Trace
    params: dict = field(default_factory=dict)


def tlb_miss_workload(footprint_mib: float = 32.0, reads: int = 200_000, seed: int = 1,
                      ipr: int = 1) -> MicroWorkload:
    """Touch every page of a ``footprint_mib`` region once (faults, shadow fill), sweep it once
    more with loads (warm walk caches), then ``reads`` loads at random pages and offsets.

    32 MiB is 16x the reach of Nehalem's 512-entry STLB, so nearly every measured read
    misses the STLB; nothing in the measured part faults or exits."""
    n = int(footprint_mib * MIB) // PAGE
    if n < 1:
        raise MemvirtError("tlb_miss_workload: footprint must be at least one page")
    rng = np.random.default_rng(seed)
    warm = Trace.concat([_ev(Kind.MMAP, REGION, n * PAGE), _acc(_pages(REGION, n), Kind.STORE),
                         _acc(_pages(REGION, n) + 64)])
    idx = rng.integers(0, n, reads)
    off = rng.integers(0, PAGE // 8, reads) * 8
    measure = _acc(REGION + idx * PAGE + off, icount=ipr)
    return MicroWorkload("tlb_miss", warm, Trace.concat([warm, measure]),
                         {"footprint_mib": footprint_mib, "reads": reads, "seed": seed})


def guest_fault_workload(block_mib: float = 4.0, rounds: int = 8) -> MicroWorkload:
    """mmap a ``block_mib`` block, store once to each page (a demand fault each), munmap it;
    repeated.  The warm-up is one round (it backs the guest frames, which later rounds
    reuse), the measurement ``rounds`` more: only fresh-page faults and the munmaps that
    free the pages again."""
    n = int(block_mib * MIB) // PAGE
    if n < 1:
        raise MemvirtError("guest_fault_workload: block must be at least one page")

    def one_round():
        return [_ev(Kind.MMAP, CHURN, n * PAGE), _acc(_pages(CHURN, n), Kind.STORE, icount=4),
                _ev(Kind.MUNMAP, CHURN, n * PAGE)]

    warm = Trace.concat(one_round())
    full = Trace.concat(one_round() + [p for _ in range(rounds) for p in one_round()])
    return MicroWorkload("guest_fault", warm, full, {"block_mib": block_mib, "rounds": rounds})


def context_switch_workload(pages: int = 8, switches: int = 2_000,
                            accesses: int = 16) -> MicroWorkload:
    """Two processes with ``pages`` warm pages each; then ``switches`` context switches, each
    followed by ``accesses`` loads of the process switched to (all TLB hits after the
    first round: entries are tagged by address space)."""
    warm_parts = []
    for pid in (1, 2):
        warm_parts += [_ev(Kind.SWITCH, pid=pid), _acc(_pages(HEAP, pages), Kind.STORE, pid=pid)]
    warm_parts.append(_ev(Kind.SWITCH, pid=1))
    warm = Trace.concat(warm_parts)
    addrs = np.resize(_pages(HEAP, pages), accesses)
    parts = list(warm_parts)
    for i in range(switches):
        pid = 2 if i % 2 == 0 else 1
        parts += [_ev(Kind.SWITCH, pid=pid), _acc(addrs, pid=pid)]
    return MicroWorkload("context_switch", warm, Trace.concat(parts),
                         {"pages": pages, "switches": switches, "accesses": accesses})


def fork_workload(parent_pages: int = 64, forks: int = 200, child_reads: int = 32) -> MicroWorkload:
    """A parent with ``parent_pages`` touched pages forks ``forks`` children one after
    another; each child reads ``child_reads`` of the parent's pages, writes one (a
    copy-on-write fault) and exits, and the parent writes one page (its own COW fault)."""
    pp = _pages(HEAP, parent_pages)
    warm = Trace.concat([_acc(pp, Kind.STORE)])
    parts = [warm]
    child = 100
    for i in range(forks):
        reads = np.resize(pp, child_reads)
        parts += [_ev(Kind.FORK, child, pid=1), _ev(Kind.SWITCH, pid=child),
                  _acc(reads, pid=child), _acc(pp[i % parent_pages:][:1], Kind.STORE, pid=child),
                  _ev(Kind.EXIT, pid=child), _ev(Kind.SWITCH, pid=1),
                  _acc(pp[(i + 1) % parent_pages:][:1], Kind.STORE)]
        child += 1
    return MicroWorkload("fork", warm, Trace.concat(parts),
                         {"parent_pages": parent_pages, "forks": forks, "child_reads": child_reads})


def tlb_miss_large_workload(footprint_mib: float = LARGE_FOOTPRINT_MIB, reads: int = 200_000,
                            seed: int = 1, ipr: int = 1) -> MicroWorkload:
    """``tlb_miss_workload`` over a large footprint: the page-table and EPT entries of the
    walks no longer fit in the caches next to the data."""
    wl = tlb_miss_workload(footprint_mib, reads, seed, ipr)
    wl.name = "tlb_miss_large"
    return wl


def tlb_miss_mcf_workload(nodes_mib: float = 24.0, arcs_mib: float = 768.0, rounds: int = 4,
                          groups: int = 75, seed: int = 1) -> MicroWorkload:
    """STLB misses with the access pattern of 429.mcf's two main loops (32-bit build): an
    array of ``nodes_mib`` of 60-byte nodes and, after it, ``arcs_mib`` of 32-byte arcs
    (the study quotes a ~1.7 GB footprint for mcf; the 32-bit layout here, 4-byte pointers
    and longs, is about half of that).

    The warm-up maps the region and touches every page in address order (mcf's reader
    writes the nodes and arcs in order), then reads each page once.  The measured part is
    ``rounds`` rounds of

    - pricing (``primal_bea_mpp``): for ``groups`` consecutive groups g, the arcs g,
      g + G, g + 2G, ... (G = arcs / 300 groups, so a stride of megabytes): per arc one
      read of the arc, one of its tail node (arcs are sorted by tail, so tails advance
      through the node array) and one of its head node (a random node);
    - refresh (``refresh_potential``): nodes in an order unrelated to their addresses
      (the spanning tree's preorder), per node one read of the node and one of a random
      arc (its ``basic_arc``); two thirds as many reads as the pricing block before it.

    Nearly every read misses the STLB: the premium per miss measures where the walks'
    references (guest tables, EPT) hit when misses have mcf's locality, not uniform
    reads'."""
    if nodes_mib <= 0 or arcs_mib <= 0 or rounds < 1 or groups < 1:
        raise MemvirtError("tlb_miss_mcf_workload: sizes, rounds and groups must be positive")
    n_nodes = max(1, int(nodes_mib * MIB) // MCF_NODE_BYTES)
    m_arcs = max(1, int(arcs_mib * MIB) // MCF_ARC_BYTES)
    nr_group = (m_arcs - 1) // MCF_GROUP + 1
    if groups > nr_group:
        raise MemvirtError(f"tlb_miss_mcf_workload: {groups} groups, the arcs have {nr_group}")
    arcs = REGION + (-(-n_nodes * MCF_NODE_BYTES // PAGE) + 16) * PAGE  # a gap, then the arcs
    pages = (arcs + m_arcs * MCF_ARC_BYTES - REGION + PAGE - 1) // PAGE
    warm = Trace.concat([_ev(Kind.MMAP, REGION, pages * PAGE),
                         _acc(_pages(REGION, pages), Kind.STORE), _acc(_pages(REGION, pages) + 64)])
    rng = np.random.default_rng(seed)

    def node(i):
        return REGION + i * MCF_NODE_BYTES

    def arc(a):
        return arcs + a * MCF_ARC_BYTES

    parts = []
    for _ in range(rounds):
        g0 = int(rng.integers(0, nr_group - groups + 1))
        blk = []
        for g in range(g0, g0 + groups):
            a = np.arange(g, m_arcs, nr_group, dtype=np.int64)
            tail = a * n_nodes // m_arcs
            head = rng.integers(0, n_nodes, len(a))
            blk.append(np.stack([arc(a), node(tail), node(head)], 1).ravel())
        pricing = np.concatenate(blk)
        k = max(1, len(pricing) // 3)  # nodes visited: 2 reads each, 2/3 of pricing's reads
        order = np.concatenate([rng.permutation(n_nodes) for _ in range(k // n_nodes + 1)])[:k]
        refresh = np.stack([node(order), arc(rng.integers(0, m_arcs, k))], 1).ravel()
        parts += [pricing, refresh]
    addrs = np.concatenate(parts) & ~np.int64(7)  # 8-byte reads that stay within a page
    measure = _acc(addrs, icount=3)
    return MicroWorkload("tlb_miss_mcf", warm, Trace.concat([warm, measure]),
                         {"nodes_mib": nodes_mib, "arcs_mib": arcs_mib, "rounds": rounds,
                          "groups": groups, "seed": seed, "reads": len(addrs)})


WORKLOADS = {
    "tlb_miss": tlb_miss_workload,
    "tlb_miss_large": tlb_miss_large_workload,
    "tlb_miss_mcf": tlb_miss_mcf_workload,
    "guest_fault": guest_fault_workload,
    "context_switch": context_switch_workload,
    "fork": fork_workload,
}


# ----------------------------------------------------------------------------- measuring
@dataclass
class Marginal:
    """The measured cost of one event in each mode, and the difference between the modes."""

    event: str
    what: str
    levels: int
    events: dict  # mode -> events in the measured part
    cycles: dict  # mode -> cycles of the measured part
    per_event: dict  # mode -> cycles per event
    marginal_cycles: float  # signed as published (tlb: nested - shadow, else shadow - nested)
    marginal_ns: float
    direction: str
    clock_ghz: float
    breakdown: dict  # mode -> per-event cycles by cost category (non-zero ones)
    published_cycles: float | None = None
    published_ns: float | None = None
    published_source: str | None = None
    params: dict = field(default_factory=dict)

    @property
    def error(self) -> float | None:
        """Relative deviation from the published figure (None when none was published)."""
        if self.published_cycles is None:
            return None
        return self.marginal_cycles / self.published_cycles - 1.0

    @property
    def within_tolerance(self) -> bool | None:
        e = self.error
        return None if e is None else abs(e) <= TOLERANCE

    def to_dict(self) -> dict:
        d = asdict(self)
        d["error"] = self.error
        d["within_tolerance"] = self.within_tolerance
        return d


def config_for(config: Config | None, levels: int | None) -> Config:
    cfg = config if config is not None else Config()
    if levels is not None and levels != cfg.guest.levels:
        cfg = cfg.with_overrides({"guest.levels": levels})
    return cfg


def _events(c: np.ndarray, event: str) -> int:
    idx = EVENTS[event]["counter"]
    if idx is None:
        return int(c[K.GPF_DEMAND] + c[K.GPF_COW])
    return int(c[idx])


def measure(event: str, config: Config | None = None, levels: int | None = STUDY_LEVELS,
            **params) -> Marginal:
    """Run the ``event`` micro-workload under shadow and nested paging and return its
    marginal cost.  ``levels`` overrides ``guest.levels`` (default 2, the study's 32-bit
    guest; ``None`` keeps the config's).  ``params`` go to the workload builder."""
    if event not in WORKLOADS:
        raise MemvirtError(f"unknown calibration event '{event}'; known: {', '.join(WORKLOADS)}")
    cfg = config_for(config, levels)
    wl = WORKLOADS[event](**params)
    events, cycles, per_event, bds = {}, {}, {}, {}
    for mode in ("shadow", "nested"):
        a = simulate(wl.warm, cfg, mode)
        b = simulate(wl.full, cfg, mode)
        dc = b.counters - a.counters
        n = _events(dc, event)
        if n <= 0:
            raise MemvirtError(f"calibration '{event}': no {event} events measured under {mode}")
        bd_a, bd_b = a.breakdown, b.breakdown
        cyc = b.cycles - a.cycles
        events[mode] = n
        cycles[mode] = cyc
        per_event[mode] = cyc / n
        bds[mode] = {k: (bd_b[k] - bd_a[k]) / n for k in K.BREAKDOWN_KEYS
                     if abs(bd_b[k] - bd_a[k]) > 1e-9}
    sign = EVENTS[event]["sign"]
    # Events differ slightly between the modes at most (e.g. TLB flushes); the premium is
    # the difference of the per-event costs.
    marg = sign * (per_event["nested"] - per_event["shadow"])
    pub = PUBLISHED.get(event, {})
    ghz = cfg.cost.clock_ghz
    return Marginal(
        event=event, what=EVENTS[event]["what"], levels=cfg.guest.levels, events=events,
        cycles=cycles, per_event=per_event, marginal_cycles=marg, marginal_ns=marg / ghz,
        direction="nested - shadow" if sign > 0 else "shadow - nested", clock_ghz=ghz,
        breakdown=bds, published_cycles=pub.get("cycles"), published_ns=pub.get("ns"),
        published_source=pub.get("source"), params=wl.params,
    )


def measure_all(config: Config | None = None, levels: int | None = STUDY_LEVELS,
                events=tuple(WORKLOADS)) -> list[Marginal]:
    return [measure(e, config, levels) for e in events]


def tlb_miss_marginal(config: Config | None = None, levels: int | None = STUDY_LEVELS,
                      **params) -> float:
    """Cycles a TLB miss costs more under nested than under shadow paging."""
    return measure("tlb_miss", config, levels, **params).marginal_cycles


def guest_fault_marginal(config: Config | None = None, levels: int | None = STUDY_LEVELS,
                         **params) -> float:
    """Cycles a guest page fault costs more under shadow than under nested paging."""
    return measure("guest_fault", config, levels, **params).marginal_cycles


def footprint_sweep(config: Config | None = None, levels: int | None = STUDY_LEVELS,
                    footprints=(4, 8, 16, 32, 64, 128, 256)) -> list[tuple[float, float]]:
    """(footprint MiB, TLB-miss marginal cycles): how the premium depends on where the
    walks' references hit (the PTE cache holds them up to about 64 MiB of footprint)."""
    return [(float(f), tlb_miss_marginal(config, levels, footprint_mib=float(f)))
            for f in footprints]


# ----------------------------------------------------------------------------- printing
def _fmt_cyc(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.1f}"


def _fmt_ns(cycles: float | None, ghz: float) -> str:
    if cycles is None:
        return "-"
    ns = cycles / ghz
    return f"{ns / 1000:,.2f}us" if abs(ns) >= 1000 else f"{ns:,.1f}ns"


LABELS = {"tlb_miss": "TLB miss", "tlb_miss_large": "TLB miss 800M",
          "tlb_miss_mcf": "TLB miss mcf", "guest_fault": "fault",
          "context_switch": "switch", "fork": "fork+exit"}


def render(results: list[Marginal], title: str = "memvirt calibrate"):
    """A rich table: per-event cost in each mode, the marginal cost and the published one."""
    from rich import box
    from rich.table import Table

    levels = sorted({m.levels for m in results})
    if len(levels) == 1:
        title += f" ({levels[0]}-level guest)"
    t = Table(title=title, box=box.SIMPLE_HEAD,
              caption="cycles per event under shadow (SP) and nested (HAP) paging; premium: "
              "nested - shadow for TLB misses, shadow - nested otherwise; time at the profile's "
              "clock")
    for col in ("event", "SP", "HAP", "premium", "time", "published", "dev"):
        t.add_column(col, justify="left" if col == "event" else "right")
    for m in results:
        pub = "-" if m.published_cycles is None else (
            f"{_fmt_cyc(m.published_cycles)}/{_fmt_ns(m.published_ns, 1.0)}")
        if m.error is None:
            dev = "-"
        else:
            color = "green" if m.within_tolerance else "red"
            dev = f"[{color}]{100 * m.error:+.0f}%[/{color}]"
        label = LABELS.get(m.event, m.event) + (f" {m.levels}L" if len(levels) > 1 else "")
        t.add_row(label, _fmt_cyc(m.per_event["shadow"]), _fmt_cyc(m.per_event["nested"]),
                  _fmt_cyc(m.marginal_cycles), _fmt_ns(m.marginal_cycles, m.clock_ghz), pub, dev)
    return t


__all__ = ["EVENTS", "PUBLISHED", "TOLERANCE", "Marginal", "MicroWorkload", "WORKLOADS",
           "context_switch_workload", "footprint_sweep", "fork_workload",
           "tlb_miss_large_workload", "tlb_miss_mcf_workload",
           "guest_fault_marginal", "guest_fault_workload", "measure", "measure_all", "render",
           "tlb_miss_marginal", "tlb_miss_workload"]
