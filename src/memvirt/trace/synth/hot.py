"""hot: a single process hammering a few pages -- nearly every access hits the TLB.

Regime: the translation-free baseline (used by the benchmark to measure the simulator's
fast path).  All accesses go to ``pages`` consecutive pages from 0x0100_0000 (uniform
page, uniform 8-byte-aligned offset); with the default 32 pages everything fits a
64-entry L1 data TLB, so after ``pages`` first-touch faults there are no misses.  One
process, no events.
"""

from __future__ import annotations

import numpy as np

from . import register_generator
from ._common import HEAP_BASE, MMAP_BASE, PAGE, Builder, ParamCheck, common, doc, rngs

DEFAULTS = dict(records=5_000_000, pages=32, ipr=3.5, store_frac=0.3, seed=1, va_bits=31)

PARAMS_DOC = {
    "records": doc("number of records", DEFAULTS["records"]),
    "pages": doc("pages in the hot set (4 KiB each)", DEFAULTS["pages"]),
    **common(DEFAULTS, "ipr", "store_frac", "seed", "va_bits"),
}


def hot(*, records=DEFAULTS["records"], pages=DEFAULTS["pages"], ipr=DEFAULTS["ipr"],
        store_frac=DEFAULTS["store_frac"], seed=DEFAULTS["seed"],
        va_bits=DEFAULTS["va_bits"]):
    """A small hot set of pages (TLB hits)."""
    c = ParamCheck("hot")
    c.common(records=records, ipr=ipr, store_frac=store_frac, seed=seed, va_bits=va_bits)
    c.range("pages", pages, 1, min(1 << 16, (MMAP_BASE - HEAP_BASE) // PAGE))
    rng, prng = rngs(seed, 2)
    r = rng.integers(0, 1 << 32, records, dtype=np.uint32)
    page = r >> np.uint32(16)
    page *= np.uint32(pages)
    page >>= np.uint32(16)
    page <<= np.uint32(12)
    r &= np.uint32(0xFF8)
    page |= r
    addr = page.astype(np.uint64)
    addr += np.uint64(HEAP_BASE)
    b = Builder()
    b.access(addr, 1)
    return b.build(prng, ipr, store_frac)


register_generator("hot", hot, PARAMS_DOC)
