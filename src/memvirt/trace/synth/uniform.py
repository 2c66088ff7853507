"""uniform: uniformly random pages over a large region -- a TLB miss on nearly every access.

Regime: the worst case for translation (used by the benchmark to measure the simulator's
miss path).  Every access picks a uniform page of the ``footprint_mib`` region at
``base`` (default 4 GiB at 2^40, so the default ``va_bits`` is 47: a 4-level guest) and
a uniform 8-byte-aligned offset.  Nearly every access misses the TLBs; each page faults
on its first touch.  One process, no events.
"""

from __future__ import annotations

import numpy as np

from . import register_generator
from ._common import PAGE, Builder, ParamCheck, common, doc, offsets, pages_of, rngs

DEFAULTS = dict(records=5_000_000, footprint_mib=4096.0, base=1 << 40, ipr=3.5,
                store_frac=0.3, seed=1, va_bits=47)

PARAMS_DOC = {
    **common(DEFAULTS, "records", "footprint_mib"),
    "base": doc("start address of the region (page-aligned)", DEFAULTS["base"]),
    **common(DEFAULTS, "ipr", "store_frac", "seed", "va_bits"),
}


def uniform(*, records=DEFAULTS["records"], footprint_mib=DEFAULTS["footprint_mib"],
            base=DEFAULTS["base"], ipr=DEFAULTS["ipr"], store_frac=DEFAULTS["store_frac"],
            seed=DEFAULTS["seed"], va_bits=DEFAULTS["va_bits"]):
    """Uniform random pages over a large region (TLB misses)."""
    c = ParamCheck("uniform")
    c.common(records=records, footprint_mib=footprint_mib, ipr=ipr, store_frac=store_frac,
             seed=seed, va_bits=va_bits)
    c.range("base", base, 0)
    if base % PAGE:
        raise c.error("base", f"must be page-aligned (a multiple of 4096), got {base:#x}")
    pages = pages_of(footprint_mib)
    c.fits(base + pages * PAGE, va_bits, "footprint_mib")
    rng, prng = rngs(seed, 2)
    if pages <= 1 << 23:  # one 32-bit draw: 23 bits pick the page, 9 the offset
        r = rng.integers(0, 1 << 32, records, dtype=np.uint32)
        page = (r >> np.uint32(9)).astype(np.uint64)
        page *= np.uint64(pages)
        page >>= np.uint64(23)
        page <<= np.uint64(12)
        r &= np.uint32(0x1FF)
        r <<= np.uint32(3)
        page |= r
        addr = page
    else:
        addr = rng.integers(0, pages, records, dtype=np.uint64) << np.uint64(12)
        addr |= offsets(rng, records)
    addr += np.uint64(base)
    b = Builder()
    b.access(addr, 1)
    return b.build(prng, ipr, store_frac)


register_generator("uniform", uniform, PARAMS_DOC)
