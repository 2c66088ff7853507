"""compile: many short-lived processes -- the guest-page-fault regime (gcc, make, shells).

Regime: a driver (pid 1, like ``make``) forks ``processes`` children one after another;
each child execs, grows a fresh heap with ``brk`` and a few small ``mmap``s, touches every
new page (a demand fault each), works mostly on recently allocated memory and its stack,
and exits.  Faults, page-table writes, process creation/teardown and context switches
dominate; TLB misses per instruction are few.  Nested paging wins (no VM exits for any
of these), shadow paging pays an exit for nearly each.

Shape of the trace:

- pid 1 sets its break, touches its ``driver_kib`` heap and its stack page once, then
  per child makes ``driver_records`` accesses, ``FORK`` (addr = child pid) and
  ``SWITCH`` to the child;
- the child (pids 2, 3, ...) stores to the parent's stack page (copy-on-write faults),
  ``EXEC``s, then runs ``heap_mib / brk_kib`` steps; each step is a ``BRK`` growing the
  heap by ``brk_kib`` (plus, at random steps, the ``MMAP`` of one of its ``mmaps``
  regions of ``mmap_kib``), a STORE to each new page, and random accesses in bursts of 8
  to one region: the heap (skewed toward recently allocated pages, below the break), the
  stack (``stack_frac``, skewed toward the top), the mmaps made so far (``mmap_frac``)
  or code pages as IFETCH (``code_frac``);
- the child ``EXIT``s and the trace ``SWITCH``es back to pid 1 (the parent waits: it has
  no records while a child runs).

The children's lengths vary (uniformly 0.5x-1.5x the mean); the random accesses fill
``records`` after the fixed parts (so ``records`` must cover at least every child's
first touches).  Access-type fractions are rounded to 1/128.
"""

from __future__ import annotations

import numpy as np

from ..records import Kind
from . import register_generator
from ._common import (
    CODE_BASE,
    HEAP_BASE,
    IFETCH,
    KIB,
    LOAD,
    MIB,
    MMAP_BASE,
    PAGE,
    STACK_TOP,
    STORE,
    Builder,
    ParamCheck,
    common,
    doc,
    offsets,
    rngs,
    store_pattern,
)

DEFAULTS = dict(
    records=5_000_000,
    processes=100,
    heap_mib=4.0,
    brk_kib=128,
    mmaps=4,
    mmap_kib=256,
    stack_kib=32,
    code_kib=512,
    stack_frac=0.25,
    mmap_frac=0.1,
    code_frac=0.02,
    driver_kib=256,
    driver_records=200,
    ipr=3.5,
    store_frac=0.3,
    seed=1,
    va_bits=31,
)

PARAMS_DOC = {
    "records": doc("approximate total number of records", DEFAULTS["records"]),
    "processes": doc("children forked (each FORK, EXEC and EXIT once)", DEFAULTS["processes"]),
    "heap_mib": doc("heap each child grows with brk, in MiB", DEFAULTS["heap_mib"]),
    "brk_kib": doc("heap growth per brk call, in KiB", DEFAULTS["brk_kib"]),
    "mmaps": doc("small anonymous mmaps per child", DEFAULTS["mmaps"]),
    "mmap_kib": doc("size of each mmap, in KiB", DEFAULTS["mmap_kib"]),
    "stack_kib": doc("stack each child uses, in KiB", DEFAULTS["stack_kib"]),
    "code_kib": doc("code (text) each child fetches from, in KiB", DEFAULTS["code_kib"]),
    "stack_frac": doc("fraction of a child's random accesses that go to its stack",
                      DEFAULTS["stack_frac"]),
    "mmap_frac": doc("fraction that go to its mmaps (once one exists)", DEFAULTS["mmap_frac"]),
    "code_frac": doc("fraction that are instruction fetches from its code",
                     DEFAULTS["code_frac"]),
    "driver_kib": doc("heap of the driver process (pid 1), in KiB", DEFAULTS["driver_kib"]),
    "driver_records": doc("driver accesses before each fork", DEFAULTS["driver_records"]),
    **common(DEFAULTS, "ipr", "store_frac", "seed", "va_bits"),
}

_T_HEAP, _T_STACK, _T_MMAP, _T_CODE = 0, 1, 2, 3
_PRE_EXEC_STORES = 4
_BURST = 8  # accesses per burst to one region


def _type_luts(stack_frac: float, mmap_frac: float, code_frac: float):
    """Lookup tables from 7 random bits to access type, and to 0 (IFETCH) or 1 (data)."""
    n_code = round(code_frac * 128)
    n_stack = round(stack_frac * 128)
    n_mmap = round(mmap_frac * 128)
    typ = np.full(128, _T_HEAP, np.int32)
    typ[:n_code] = _T_CODE
    typ[n_code:n_code + n_stack] = _T_STACK
    typ[n_code + n_stack:n_code + n_stack + n_mmap] = _T_MMAP
    fetch = np.full(128, LOAD, np.uint8)
    fetch[:n_code] = IFETCH
    return typ, fetch


def forked_children(rng, *, driver_pid: int, first_pid: int, budgets: np.ndarray,
                    heap_pages: int, step_pages: int, mmaps: int, mmap_pages: int,
                    stack_pages: int, code_pages: int, driver_pages: int,
                    driver_records: int, stack_frac: float, mmap_frac: float,
                    code_frac: float, store_frac: float, driver_init: bool = True) -> Builder:
    """Records of the driver forking one child per entry of ``budgets`` (records the child
    spends on accesses after exec), run one after another.  ``driver_init``: the driver
    first sets its break and touches its heap and stack page.  Used by ``compile`` and by
    the fork-style fault phases of ``phases``."""
    nchild = len(budgets)
    steps = -(-heap_pages // step_pages)
    brk_pages = np.minimum(np.arange(1, steps + 1) * step_pages, heap_pages)  # after step k
    new_pages = np.diff(brk_pages, prepend=0)
    # At which heap step each child makes each mmap (sorted: mmap j is at MMAP_BASE + j*size).
    mm_step = np.sort(rng.integers(0, steps, (nchild, mmaps)), axis=1)
    mm_at = np.zeros((nchild, steps), np.int64)  # mmaps made at step k
    for j in range(mmaps):
        np.add.at(mm_at, (np.arange(nchild), mm_step[:, j]), 1)
    mm_avail = np.cumsum(mm_at, axis=1)  # mmaps existing during step k
    first_touch = heap_pages + mmaps * mmap_pages
    rand = np.maximum(np.asarray(budgets, np.int64) - first_touch, 0)
    # Split each child's random accesses evenly over its heap steps.
    seg_rand = (rand[:, None] * np.arange(1, steps + 1) // steps)
    seg_rand = np.diff(seg_rand, axis=1, prepend=0)  # (nchild, steps)

    # One table row per (child, step) and access type: the address of the last 8 bytes of
    # the region's top page, and its width in pages (pages are picked downward from the
    # top, skewed toward it).
    nseg = nchild * steps
    top = np.empty((nseg, 4), np.uint64)
    width = np.empty((nseg, 4), np.uint32)
    heap_pages_now = np.tile(brk_pages, nchild)
    heap_top = HEAP_BASE + heap_pages_now * PAGE - 8
    mm_pages_avail = mm_avail.reshape(-1) * mmap_pages
    has_mm = mm_pages_avail > 0
    top[:, _T_HEAP] = heap_top
    width[:, _T_HEAP] = heap_pages_now
    top[:, _T_STACK] = STACK_TOP - 8
    width[:, _T_STACK] = stack_pages
    top[:, _T_MMAP] = np.where(has_mm, MMAP_BASE + mm_pages_avail * PAGE - 8, heap_top)
    width[:, _T_MMAP] = np.where(has_mm, mm_pages_avail, heap_pages_now)
    top[:, _T_CODE] = CODE_BASE + code_pages * PAGE - 8
    width[:, _T_CODE] = code_pages
    top = top.reshape(-1)
    width = width.reshape(-1)

    # Accesses come in bursts of _BURST to one region type (a function working on its
    # stack frame, then on a heap object, ...); the type is drawn per burst.
    seg_len = seg_rand.reshape(-1)
    seg_bursts = seg_len // _BURST
    nb = int(seg_bursts.sum())
    t7 = rng.integers(0, 128, nb, dtype=np.uint8)
    typ_lut, fetch_lut = _type_luts(stack_frac, mmap_frac, code_frac)
    fi = np.repeat(np.arange(0, 4 * nseg, 4, dtype=np.int32), seg_bursts)
    fi += typ_lut[t7]
    total = nb * _BURST
    # Per access: 16 random bits pick the page (skewed toward the top), 9 the offset.
    r = rng.integers(0, 1 << 32, total, dtype=np.uint32)
    v = r >> np.uint32(16)
    v *= v
    v >>= np.uint32(16)  # P(v < x) = sqrt(x / 2^16)
    v *= np.repeat(width[fi], _BURST)  # width <= 2^16, so no overflow
    v >>= np.uint32(16)  # pages below the top page
    v <<= np.uint32(12)
    r &= np.uint32(0xFF8)
    v |= r
    rand_addr = np.repeat(top[fi], _BURST)
    rand_addr -= v
    # Kinds: IFETCH in code bursts, else LOAD or (a store_frac share) STORE.
    rand_kind = np.repeat(fetch_lut[t7], _BURST)  # 0 = IFETCH, 1 = LOAD
    rand_kind += rand_kind & store_pattern(rng, total, store_frac)
    seg_len = seg_bursts * _BURST

    heap_ft = HEAP_BASE + np.arange(heap_pages, dtype=np.uint64) * np.uint64(PAGE)
    mmap_ft = MMAP_BASE + np.arange(mmaps * mmap_pages, dtype=np.uint64) * np.uint64(PAGE)
    drv = (HEAP_BASE + np.arange(driver_pages, dtype=np.uint64) * np.uint64(PAGE))
    d_total = driver_records * (nchild + 1)
    d_addr = (np.uint64(HEAP_BASE)
              + (rng.integers(0, driver_pages, d_total).astype(np.uint64) << np.uint64(12))
              + offsets(rng, d_total))
    pre_exec = STACK_TOP - PAGE + offsets(rng, _PRE_EXEC_STORES * nchild)

    b = Builder()
    if driver_init:
        b.event(Kind.BRK, driver_pid, HEAP_BASE + driver_pages * PAGE)
        b.access(drv, driver_pid, kind=STORE)
        b.access(np.array([STACK_TOP - PAGE], np.uint64), driver_pid, kind=STORE)
    pos = 0
    seg = 0
    for c in range(nchild):
        pid = first_pid + c
        b.access(d_addr[c * driver_records:(c + 1) * driver_records], driver_pid)
        b.event(Kind.FORK, driver_pid, pid)
        b.event(Kind.SWITCH, pid)
        b.access(pre_exec[c * _PRE_EXEC_STORES:(c + 1) * _PRE_EXEC_STORES], pid, kind=STORE)
        b.event(Kind.EXEC, pid)
        made = 0
        for k in range(steps):
            b.event(Kind.BRK, pid, HEAP_BASE + int(brk_pages[k]) * PAGE)
            lo = int(brk_pages[k] - new_pages[k])
            b.access(heap_ft[lo:int(brk_pages[k])], pid, kind=STORE)
            for _ in range(int(mm_at[c, k])):
                b.event(Kind.MMAP, pid, MMAP_BASE + made * mmap_pages * PAGE, mmap_pages * PAGE)
                b.access(mmap_ft[made * mmap_pages:(made + 1) * mmap_pages], pid, kind=STORE)
                made += 1
            n = int(seg_len[seg])
            b.access(rand_addr[pos:pos + n], pid, kind=rand_kind[pos:pos + n])
            pos += n
            seg += 1
        b.event(Kind.EXIT, pid)
        b.event(Kind.SWITCH, driver_pid)
    b.access(d_addr[nchild * driver_records:], driver_pid)
    return b


def compile(*, records=DEFAULTS["records"], processes=DEFAULTS["processes"],
            heap_mib=DEFAULTS["heap_mib"], brk_kib=DEFAULTS["brk_kib"],
            mmaps=DEFAULTS["mmaps"], mmap_kib=DEFAULTS["mmap_kib"],
            stack_kib=DEFAULTS["stack_kib"], code_kib=DEFAULTS["code_kib"],
            stack_frac=DEFAULTS["stack_frac"], mmap_frac=DEFAULTS["mmap_frac"],
            code_frac=DEFAULTS["code_frac"], driver_kib=DEFAULTS["driver_kib"],
            driver_records=DEFAULTS["driver_records"], ipr=DEFAULTS["ipr"],
            store_frac=DEFAULTS["store_frac"], seed=DEFAULTS["seed"],
            va_bits=DEFAULTS["va_bits"]):
    """Short-lived processes forked by a driver (guest-page-fault bound)."""
    c = ParamCheck("compile")
    c.common(records=records, processes=processes, ipr=ipr, store_frac=store_frac, seed=seed,
             va_bits=va_bits)
    c.range("heap_mib", heap_mib, 1 / 256, 240)
    c.range("brk_kib", brk_kib, 4, 1 << 20)
    c.range("mmaps", mmaps, 0, 1024)
    c.range("mmap_kib", mmap_kib, 4, 1 << 20)
    c.range("stack_kib", stack_kib, 4, 64 * 1024)
    c.range("code_kib", code_kib, 4, (HEAP_BASE - CODE_BASE) // KIB)
    for name, v in (("stack_frac", stack_frac), ("mmap_frac", mmap_frac),
                    ("code_frac", code_frac)):
        c.range(name, v, 0.0, 1.0)
    if stack_frac + mmap_frac + code_frac > 1.0:
        raise c.error("stack_frac", "+ mmap_frac + code_frac must not exceed 1")
    c.range("driver_kib", driver_kib, 4, (MMAP_BASE - HEAP_BASE) // KIB)
    c.range("driver_records", driver_records, 0, 1 << 30)
    mmap_pages = max(1, mmap_kib * KIB // PAGE)
    stack_pages = max(1, stack_kib * KIB // PAGE)
    if MMAP_BASE + mmaps * mmap_pages * PAGE > STACK_TOP - stack_pages * PAGE:
        raise c.error("mmaps", "* mmap_kib does not fit between 0x1000_0000 and the stack")
    if mmaps * mmap_pages > 1 << 16:
        raise c.error("mmaps", "* mmap_kib must not exceed 256 MiB")
    heap_pages = max(1, int(round(heap_mib * MIB / PAGE)))
    step_pages = max(1, brk_kib * KIB // PAGE)
    driver_pages = max(1, driver_kib * KIB // PAGE)
    code_pages = max(1, code_kib * KIB // PAGE)

    rng, prng = rngs(seed, 2)
    steps = -(-heap_pages // step_pages)
    fixed = driver_pages + 2 + driver_records * (processes + 1) + processes * (
        _PRE_EXEC_STORES + 5 + steps + mmaps)
    first_touch = heap_pages + mmaps * mmap_pages
    if records < fixed + processes * first_touch:
        raise c.error("records", f"({records}) is too small for {processes} children that "
                      f"each touch {first_touch} pages (at least "
                      f"{fixed + processes * first_touch} records); raise it or lower "
                      "processes, heap_mib or mmaps")
    avail = records - fixed
    w = rng.uniform(0.5, 1.5, processes)
    budgets = np.floor(avail * w / w.sum()).astype(np.int64)
    b = forked_children(
        rng, driver_pid=1, first_pid=2, budgets=budgets, heap_pages=heap_pages,
        step_pages=step_pages, mmaps=mmaps, mmap_pages=mmap_pages, stack_pages=stack_pages,
        code_pages=code_pages, driver_pages=driver_pages, driver_records=driver_records,
        stack_frac=stack_frac, mmap_frac=mmap_frac, code_frac=code_frac,
        store_frac=store_frac)
    return b.build(prng, ipr, store_frac)


register_generator("compile", compile, PARAMS_DOC)
