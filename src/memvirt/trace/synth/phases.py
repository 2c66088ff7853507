"""phases: alternating TLB-heavy and fault-heavy phases -- where dynamic switching wins.

Regime: phase 0, 2, 4, ... are a pointer chase over a footprint mapped once at the start
(the ``chase`` regime: shadow paging wins); phases 1, 3, 5, ... are fault-heavy (the
``churn`` or ``compile`` regime: nested paging wins).  Either static mode loses in half
of the phases, so a policy that switches modes at phase boundaries beats both.  For that,
each phase must span several sampling periods of the policy (``phase_records * ipr``
instructions per phase versus ``period_instructions``), and the two kinds of phases
should weigh about the same: the defaults (a 4 MiB chase, one fault per 512 accesses in
fault phases) make the static modes within about 25% of each other, and the mode switch
cheap (a shadow refill of 1,024 pages).

Shape of the trace:

- pid 1 ``MMAP``s ``span_mib`` at 0x1000_0000 and touches ``footprint_mib`` of it (one
  STORE per page, carrying 64 instructions each): the warm-up, before phase 0;
- TLB phases: pid 1 continues one chase cycle over those pages (``per_node`` 8-byte
  reads per 64-byte node, see ``chase``); no faults;
- fault phases, ``fault_style = "churn"``: pid 1 mmaps a ``block_mib`` block (two slots
  above the chase region, used in turn), makes ``touches`` accesses to each page (the
  first a faulting store), munmaps it, and repeats;
- fault phases, ``fault_style = "fork"``: the trace ``SWITCH``es to a small driver
  process (pid 2), which forks children one after another (pids 3, 4, ...); each execs,
  grows a ``block_mib`` heap with brk in 512 KiB steps (``touches`` accesses per heap page,
  some on its stack and code) and exits, as in ``compile``; then the trace switches
  back to pid 1.

``Trace.meta["phase_starts"]`` lists the record index where each phase starts and
``Trace.meta["phase_kinds"]`` whether it is ``"tlb"`` or ``"fault"``.
"""

from __future__ import annotations

import numpy as np

from ..records import Kind
from . import register_generator
from ._common import (
    MIB,
    MMAP_BASE,
    PAGE,
    STACK_TOP,
    STORE,
    Builder,
    ParamCheck,
    common,
    doc,
    pages_of,
    rngs,
)
from .chase import ChaseWalk
from .churn import churn_cycles
from .compile import forked_children

DEFAULTS = dict(
    records=5_000_000,
    phases=6,
    phase_records=0,
    footprint_mib=4.0,
    span_mib=1024.0,
    per_node=1,
    fault_style="churn",
    block_mib=1.0,
    touches=512,
    ipr=3.5,
    store_frac=0.1,
    seed=1,
    va_bits=31,
)

PARAMS_DOC = {
    "records": doc("approximate total number of records (ignored when phase_records is "
                   "set)", DEFAULTS["records"]),
    "phases": doc("number of phases, alternating TLB-heavy (first) and fault-heavy",
                  DEFAULTS["phases"]),
    "phase_records": doc("records per phase; 0: (records - warm-up) / phases",
                         DEFAULTS["phase_records"]),
    "footprint_mib": doc("memory the TLB phases chase over, in MiB (touched once in the "
                         "warm-up)", DEFAULTS["footprint_mib"]),
    "span_mib": doc("virtual span in MiB the chased pages are scattered over",
                    DEFAULTS["span_mib"]),
    "per_node": doc("TLB phases: accesses per node visit (8 bytes apart in a 64-byte node)",
                    DEFAULTS["per_node"]),
    "fault_style": doc("fault phases: 'churn' (mmap/touch/munmap) or 'fork' (short-lived "
                       "child processes)", DEFAULTS["fault_style"]),
    "block_mib": doc("fault phases: MiB per mmapped block (churn) or per child heap (fork)",
                     DEFAULTS["block_mib"]),
    "touches": doc("fault phases: accesses per freshly mapped page", DEFAULTS["touches"]),
    **common(DEFAULTS, "ipr", "store_frac", "seed", "va_bits"),
}

_INIT_ICOUNT = 64
_NODE_BYTES = 64
_CHILD_STEP_PAGES = 128  # 512 KiB brk steps
_CHILD_STACK_PAGES = 8
_CHILD_CODE_PAGES = 64
_DRIVER_PAGES = 16
_DRIVER_RECORDS = 50
_CHILD_OVERHEAD = 10  # fork/switch/exec/exit/switch records and pre-exec stores, roughly


def phases(*, records=DEFAULTS["records"], phases=DEFAULTS["phases"],
           phase_records=DEFAULTS["phase_records"], footprint_mib=DEFAULTS["footprint_mib"],
           span_mib=DEFAULTS["span_mib"], per_node=DEFAULTS["per_node"],
           fault_style=DEFAULTS["fault_style"],
           block_mib=DEFAULTS["block_mib"], touches=DEFAULTS["touches"],
           ipr=DEFAULTS["ipr"], store_frac=DEFAULTS["store_frac"], seed=DEFAULTS["seed"],
           va_bits=DEFAULTS["va_bits"]):
    """Alternating TLB-heavy and fault-heavy phases."""
    c = ParamCheck("phases")
    c.common(records=records, footprint_mib=footprint_mib, ipr=ipr, store_frac=store_frac,
             seed=seed, va_bits=va_bits)
    c.range("phases", phases, 1, 100_000)
    c.range("phase_records", phase_records, 0, 1 << 34)
    c.range("span_mib", span_mib, 0)
    c.range("per_node", per_node, 1, _NODE_BYTES // 8)
    if fault_style not in ("churn", "fork"):
        raise c.error("fault_style", f"must be 'churn' or 'fork', got {fault_style!r}")
    c.range("block_mib", block_mib, 1 / 256, 240 if fault_style == "fork" else 1 << 16)
    c.range("touches", touches, 1, 1 << 16)

    pages = pages_of(footprint_mib)
    span_pages = max(pages, int(span_mib * MIB) // PAGE)
    block_pages = pages_of(block_mib)
    churn_base = MMAP_BASE + span_pages * PAGE + 16 * MIB
    churn_end = churn_base + 2 * (block_pages + 1) * PAGE
    c.fits(churn_end, va_bits, "span_mib")
    if churn_end > STACK_TOP - 16 * MIB:
        raise c.error("span_mib", "+ block_mib leave no room below the stack")
    warm = pages + 1
    if not phase_records:
        if records < warm + phases:
            raise c.error("records", f"({records}) leaves no room for the phases after the "
                          f"warm-up ({warm} records); raise it or lower footprint_mib")
        phase_records = (records - warm) // phases

    rng, crng, prng = rngs(seed, 3)
    b = Builder()
    b.event(Kind.MMAP, 1, MMAP_BASE, span_pages * PAGE)
    walk = ChaseWalk(rng, MMAP_BASE, pages, span_pages, _NODE_BYTES, per_node)
    b.access(walk.page_addr, 1, kind=STORE, icount=_INIT_ICOUNT)
    starts: list[int] = []
    kinds: list[str] = []
    slot = 0
    next_pid = 3
    driver_ready = False
    for ph in range(phases):
        starts.append(b.n)
        if ph % 2 == 0:
            kinds.append("tlb")
            for a in walk.take(phase_records):
                b.access(a, 1)
            continue
        kinds.append("fault")
        if fault_style == "churn":
            slot = churn_cycles(crng, b, 1, phase_records, churn_base, block_pages, touches,
                                2, store_frac, slot)
            continue
        budget = block_pages * touches
        nchild = max(1, round(phase_records / (budget + _DRIVER_RECORDS + _CHILD_OVERHEAD)))
        b.event(Kind.SWITCH, 2)
        b.extend(forked_children(
            crng, driver_pid=2, first_pid=next_pid,
            budgets=np.full(nchild, budget, np.int64), heap_pages=block_pages,
            step_pages=_CHILD_STEP_PAGES, mmaps=0, mmap_pages=1,
            stack_pages=_CHILD_STACK_PAGES, code_pages=_CHILD_CODE_PAGES,
            driver_pages=_DRIVER_PAGES, driver_records=_DRIVER_RECORDS, stack_frac=0.2,
            mmap_frac=0.0, code_frac=0.02, store_frac=store_frac,
            driver_init=not driver_ready))
        driver_ready = True
        next_pid += nchild
        b.event(Kind.SWITCH, 1)
    trace = b.build(prng, ipr, store_frac)
    trace.meta.update(phase_starts=starts, phase_kinds=kinds)
    return trace


register_generator("phases", phases, PARAMS_DOC)
