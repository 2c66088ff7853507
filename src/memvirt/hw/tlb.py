"""TLB-level operations over the set-associative structures: flushes and INVLPG.

TLB keys are (address space << 45 | virtual page number): entries are tagged by
address space (PCID); without PCID the guest flushes them on every CR3 load.
A TLB entry's value is its write permission (1 = writable).
"""

from __future__ import annotations

from numba import njit

from .. import counters as K
from .cache import DTLB, ITLB, NPSC0, NTLB, PSC0, STLB, flush, invalidate


@njit(cache=True, _nrt=False, inline="always")
def tlb_key(slot, vpn):
    return (slot << 45) | vpn


@njit(cache=True, _nrt=False)
def flush_psc(st):
    ctag, cstamp, cgeom, clast = st.cache_tag, st.cache_stamp, st.cache_geom, st.cache_last
    for lv in range(1, 5):
        flush(ctag, cstamp, cgeom, clast, PSC0 + lv)


@njit(cache=True, _nrt=False)
def flush_tlbs(st):
    """Flush the TLBs and paging-structure caches (a CR3 reload without PCID, a VPID-less exit)."""
    C, ctag, cstamp, cgeom, clast = st.counters, st.cache_tag, st.cache_stamp, st.cache_geom, st.cache_last
    flush(ctag, cstamp, cgeom, clast, ITLB)
    flush(ctag, cstamp, cgeom, clast, DTLB)
    flush(ctag, cstamp, cgeom, clast, STLB)
    flush_psc(st)
    C[K.TLB_FLUSHES] += 1


@njit(cache=True, _nrt=False)
def flush_nested(st):
    """Flush the nested TLB and nested paging-structure caches (EPT root change)."""
    ctag, cstamp, cgeom, clast = st.cache_tag, st.cache_stamp, st.cache_geom, st.cache_last
    flush(ctag, cstamp, cgeom, clast, NTLB)
    for lv in range(1, 5):
        flush(ctag, cstamp, cgeom, clast, NPSC0 + lv)


@njit(cache=True, _nrt=False)
def invlpg_tlbs(st, slot, vpn):
    """INVLPG: drop one page's entries; paging-structure caches are flushed (Intel SDM 4.10.4.1)."""
    ctag, cstamp, cgeom, clast = st.cache_tag, st.cache_stamp, st.cache_geom, st.cache_last
    k = tlb_key(slot, vpn)
    invalidate(ctag, cstamp, cgeom, clast, ITLB, k)
    invalidate(ctag, cstamp, cgeom, clast, DTLB, k)
    invalidate(ctag, cstamp, cgeom, clast, STLB, k)
    flush_psc(st)
