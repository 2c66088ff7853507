"""The hypervisor's physical map: guest frames (gfn) backed by host frames (hfn), and EPT.

Guest memory is backed on first touch: the first time the guest allocates a frame
that no host frame backs yet, the VMM allocates one (or a 2 MiB region with large
host pages), creating any missing EPT page-table pages, in one VM exit (an EPT
violation under nested paging; a populate fault on the guest's direct map under
shadow paging).  Backed frames stay backed.
"""

from __future__ import annotations

from numba import njit

from .. import counters as K
from .. import state as X
from ..guest.pagetable import find, make_key, put
from ..hw.tlb import flush_tlbs


@njit(cache=True, _nrt=False)
def vm_exit(st, reason):
    """Count one VM exit; without VPID the TLBs are flushed on the way out and back in."""
    S, C = st.scalars, st.counters
    C[reason] += 1
    if S[X.S_VPID] == 0:
        flush_tlbs(st)


@njit(cache=True, _nrt=False)
def alloc_hfn(st, n):
    """Host frames: one frame for shadow/EPT pages (recycled), or ``n`` contiguous for backing."""
    S, hfree = st.scalars, st.host_free
    if n == 1 and S[X.S_HFREE_TOP] > 0:
        S[X.S_HFREE_TOP] -= 1
        return hfree[S[X.S_HFREE_TOP]]
    h = S[X.S_NEXT_HFN]
    S[X.S_NEXT_HFN] += n
    return h


@njit(cache=True, _nrt=False)
def free_hfn(st, h):
    S, hfree = st.scalars, st.host_free
    hfree[S[X.S_HFREE_TOP]] = h
    S[X.S_HFREE_TOP] += 1


@njit(cache=True, _nrt=False, inline="always")
def hfn_of(st, gfn):
    """Host frame backing guest frame ``gfn``, or -1."""
    S, p2m = st.scalars, st.p2m
    if S[X.S_HOST_LEAF] == 0:
        return p2m[gfn]
    b = p2m[gfn >> 9]
    if b < 0:
        return -1
    return b + (gfn & 511)


@njit(cache=True, _nrt=False)
def back_frame(st, gfn):
    """Back ``gfn`` if needed (one exit); returns its hfn."""
    S, C, eup, p2m = st.scalars, st.counters, st.ept_upper, st.p2m
    h = hfn_of(st, gfn)
    if h >= 0:
        return h
    leaf = S[X.S_HOST_LEAF]
    if leaf == 0:
        h = alloc_hfn(st, 1)
        p2m[gfn] = h
        C[K.HOST_FRAMES] += 1
    else:
        b = alloc_hfn(st, 512)
        p2m[gfn >> 9] = b
        C[K.HOST_FRAMES] += 512
        h = b + (gfn & 511)
    used = S[X.S_EUP_USED:X.S_EUP_USED + 1]
    for lv in range(S[X.S_EPT_LEVELS] - 1, leaf, -1):
        k = make_key(0, lv, gfn >> (9 * lv))
        if find(eup, k) < 0:
            put(eup, used, k, alloc_hfn(st, 1), 0)
    if S[X.S_MODE] == X.MODE_NESTED:
        vm_exit(st, K.EXIT_EPT_VIOLATION)
    else:
        vm_exit(st, K.EXIT_POPULATE)
    return h
