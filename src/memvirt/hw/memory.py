"""The memory hierarchy: L1D, L2 and L3 caches in front of DRAM, for walks and program data.

Every page-walk reference and (with ``hw.data_caches``) every program data access looks up
the caches by physical 64-byte line: L1D (walk references too when ``hw.walks_in_l1d``, as
Intel's page-miss handler loads through the L1D), then L2, then L3; a miss fills every level
it missed (inclusive, without back-invalidation), and the level that served it is counted.
Walk references and data compete for the same lines, so where a walk reference hits depends
on the program's footprint and access pattern, as on the machine; the cost model prices each
by that level's latency (walks) or stall (data).

Keys are physical line numbers: natively a guest frame's, under virtualization the host
frame's (what the caches of the real machine see).  A level with zero entries is skipped.
"""

from __future__ import annotations

from numba import njit

from .cache import L1D, L2C, L3C, touch

LEVEL_L1 = 0
LEVEL_L2 = 1
LEVEL_L3 = 2
LEVEL_DRAM = 3


@njit(cache=True, _nrt=False, inline="always")
def lookup_below_l1(ctag, cstamp, cval, cgeom, clast, cclock, line):
    """Look ``line`` up from the L2 down (fill what missed); the level that served it."""
    if cgeom[L2C, 1] > 0 and touch(ctag, cstamp, cval, cgeom, clast, cclock, L2C, line):
        return LEVEL_L2
    if cgeom[L3C, 1] > 0 and touch(ctag, cstamp, cval, cgeom, clast, cclock, L3C, line):
        return LEVEL_L3
    return LEVEL_DRAM


@njit(cache=True, _nrt=False, inline="always")
def lookup_line(st, line, from_l1):
    """Look ``line`` up from the L1D (``from_l1``) or the L2 down; fill what missed.
    Returns the level that served it (LEVEL_L1 .. LEVEL_DRAM)."""
    ctag, cstamp, cval = st.cache_tag, st.cache_stamp, st.cache_val
    cgeom, clast, cclock = st.cache_geom, st.cache_last, st.cache_clock
    if from_l1 and cgeom[L1D, 1] > 0:
        if touch(ctag, cstamp, cval, cgeom, clast, cclock, L1D, line):
            return LEVEL_L1
    return lookup_below_l1(ctag, cstamp, cval, cgeom, clast, cclock, line)
