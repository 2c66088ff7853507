"""compute: a small footprint worked on with good locality -- the "no difference" regime.

Regime: a small heap (set up with one ``brk``), most accesses in a small hot window that
drifts slowly through it, the rest spread over the whole footprint, and arithmetic-heavy
code (``ipr`` = 8 instructions per memory access).  The footprint is well inside the L2
TLB's reach (512 x 4 KiB = 2 MiB on Nehalem), so after the first touches there are no
page walks and no faults: shadow and nested paging cost about the same (most SPEC CPU2006
programs in the selective-paging study).  Only the first touches differ, so keep the
footprint small next to the trace length (the default 1 MiB is 256 faults).

Shape of the trace, per process: ``BRK`` to ``footprint_mib`` above 0x0100_0000, then
accesses.  Access ``i`` goes, with probability ``hot_frac`` (rounded to 1/128), to a
uniform page of the hot window of ``hot_kib`` that starts at page
``(i // window_records) mod pages`` (wrapping around), otherwise to a uniform page of
the footprint; offsets are uniform, 8-byte aligned.
"""

from __future__ import annotations

import numpy as np

from ..records import Kind
from . import register_generator
from ._common import (
    HEAP_BASE,
    KIB,
    MMAP_BASE,
    PAGE,
    Builder,
    ParamCheck,
    common,
    doc,
    interleave,
    pages_of,
    rngs,
    split,
)

DEFAULTS = dict(
    records=5_000_000,
    footprint_mib=1.0,
    hot_kib=64,
    hot_frac=0.9,
    window_records=20_000,
    processes=1,
    slice_records=200_000,
    ipr=8.0,
    store_frac=0.3,
    seed=1,
    va_bits=31,
)

PARAMS_DOC = {
    **common(DEFAULTS, "records", "footprint_mib"),
    "hot_kib": doc("size of the hot window, in KiB", DEFAULTS["hot_kib"]),
    "hot_frac": doc("fraction of accesses that go to the hot window", DEFAULTS["hot_frac"]),
    "window_records": doc("records between one-page moves of the hot window",
                          DEFAULTS["window_records"]),
    **common(DEFAULTS, "processes", "slice_records", "ipr", "store_frac", "seed", "va_bits"),
}


def local_accesses(rng, n: int, base: int, pages: int, hot_pages: int, hot_frac: float,
                   window_records: int) -> np.ndarray:
    """``n`` addresses: hot-window accesses with probability ``hot_frac``, else uniform over
    ``pages`` pages from ``base`` (``pages`` <= 2^16)."""
    r = rng.integers(0, 1 << 32, n, dtype=np.uint32)
    hot = ((r >> np.uint32(9)) & np.uint32(0x7F)) < np.uint32(round(hot_frac * 128))
    width = np.where(hot, np.uint32(hot_pages), np.uint32(pages))
    page = r >> np.uint32(16)
    page *= width
    page >>= np.uint32(16)
    win = np.repeat(np.arange(-(-n // window_records), dtype=np.uint32) % np.uint32(pages),
                    window_records)[:n]
    win *= hot
    page += win
    page = np.where(page >= pages, page - np.uint32(pages), page)
    page <<= np.uint32(12)
    r &= np.uint32(0xFF8)
    page |= r
    addr = page.astype(np.uint64)
    addr += np.uint64(base)
    return addr


def compute(*, records=DEFAULTS["records"], footprint_mib=DEFAULTS["footprint_mib"],
            hot_kib=DEFAULTS["hot_kib"], hot_frac=DEFAULTS["hot_frac"],
            window_records=DEFAULTS["window_records"], processes=DEFAULTS["processes"],
            slice_records=DEFAULTS["slice_records"], ipr=DEFAULTS["ipr"],
            store_frac=DEFAULTS["store_frac"], seed=DEFAULTS["seed"],
            va_bits=DEFAULTS["va_bits"]):
    """Small footprint with locality (few TLB misses, few faults)."""
    c = ParamCheck("compute")
    c.common(records=records, footprint_mib=footprint_mib, processes=processes,
             slice_records=slice_records, ipr=ipr, store_frac=store_frac, seed=seed,
             va_bits=va_bits)
    c.range("footprint_mib", footprint_mib, None, (MMAP_BASE - HEAP_BASE) / (1 << 20))
    c.range("hot_kib", hot_kib, 4, 1 << 20)
    c.range("hot_frac", hot_frac, 0.0, 1.0)
    c.range("window_records", window_records, 1)
    pages = max(1, pages_of(footprint_mib) // processes)
    hot_pages = min(pages, max(1, hot_kib * KIB // PAGE))
    gens = rngs(seed, processes + 1)
    pids = list(range(1, processes + 1))
    parts = []
    for i, n in enumerate(split(records, processes)):
        b = Builder()
        b.event(Kind.BRK, pids[i], HEAP_BASE + pages * PAGE)
        b.access(local_accesses(gens[i], max(n - 1, 0), HEAP_BASE, pages, hot_pages,
                                hot_frac, window_records), pids[i])
        parts.append(b)
    return interleave(parts, pids, slice_records).build(gens[-1], ipr, store_frac)


register_generator("compute", compute, PARAMS_DOC)
