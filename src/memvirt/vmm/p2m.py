"""The hypervisor's physical map: guest frames (gfn) backed by host frames (hfn), and EPT.

``host.populate = "boot"``: every guest frame is backed when the VM is built (Xen 3.3's
domain builder; ``populate_all`` at start-up, no exits later).  ``"demand"`` (KVM): the
first time the guest allocates a frame that no host frame backs yet, the VMM allocates one
(or, with large host pages, the whole 2 MiB or 1 GiB region around it), creating any missing
EPT page-table pages, in one VM exit (an EPT violation under nested paging; a populate fault
on the guest's direct map under shadow paging).  Backed frames stay backed.

Host pages (``host.page_size``, ``S_HOST_LEAF``): the EPT maps guest memory with 4 KiB pages
(leaf 0: a PTE), 2 MiB pages (leaf 1: a PDE with bit 7 set) or 1 GiB pages (leaf 2: a PDPTE
with bit 7 set; Intel SDM vol. 3, 28.2.2; AMD's nested page tables likewise; KVM backs a
guest with 1 GiB hugetlbfs pages when asked).  ``ept_upper`` holds the EPT pages above the
leaf level.  ``p2m`` holds the leaves: one entry per 4 KiB frame with 4 KiB host pages, else
one entry per 2 MiB of guest memory, the first host frame backing it (a 1 GiB host page
fills its 512 consecutive entries), so finding a frame's backing is the same for both large
sizes.  A large host page is host-contiguous and backed whole, even past the end of the
guest's memory (QEMU rounds a hugetlbfs backing up to whole pages).

Every VM exit also runs the VMM's code and touches its data (``vmm_footprint``): with VPID
its translations share the TLBs with the guest's (tagged by the VMM's own key space) and its
lines share the caches, so exits evict guest entries and lines, which the guest then misses
again; without VPID the exit flushes the TLBs instead.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .. import counters as K
from .. import state as X
from ..guest.pagetable import find, make_key, put
from ..hw.cache import DTLB, ITLB, L1D, STLB, insert, lookup, retouch
from ..hw.memory import LEVEL_L1, lookup_line
from ..hw.tlb import flush_tlbs


@njit(cache=True, _nrt=False, inline="always")
def _room(cgeom, cid):
    """VMM entries structure ``cid`` takes at most (sets x (ways - 1)); no limit when the
    structure is disabled (nothing is inserted)."""
    if cgeom[cid, 1] == 0:
        return np.int64(1) << 40
    return cgeom[cid, 1] * (cgeom[cid, 2] - 1)


@njit(cache=True, _nrt=False)
def vmm_footprint(st):
    """The VMM's handler runs: its code and data pages go through the TLBs (VMM-tagged keys:
    a miss loads one, evicting the set's least recently used entry, often a guest's) and its
    data lines through the caches.

    The guest then resumes where it stopped: the code page, data page and data line it was
    using are the first it uses again, so they end up the most recently used, above the
    VMM's.  (This is also what keeps a page-collapsed trace exact: a run's folded accesses
    need its page to be the most recent in its set, as the full trace's next access makes it.)
    """
    S, C = st.scalars, st.counters
    ctag, cstamp, cval = st.cache_tag, st.cache_stamp, st.cache_val
    cgeom, clast, cclock = st.cache_geom, st.cache_last, st.cache_clock
    ik, ii = clast[ITLB, 0], clast[ITLB, 1]
    dk, di = clast[DTLB, 0], clast[DTLB, 1]
    lk, li = clast[L1D, 0], clast[L1D, 1]
    base = np.int64(X.VMM_SPACE) << 45
    # Consecutive keys fill consecutive sets.  At most ways - 1 VMM entries per set of each
    # TLB, so the guest's most recently used entry of every set survives the exit (the
    # profiles' TLBs are far from the cap; only tiny test TLBs reach it).
    ncode = min(S[X.S_VMM_CODE], _room(cgeom, ITLB))
    ndata = min(S[X.S_VMM_DATA], _room(cgeom, DTLB))
    nboth = min(ncode + ndata, _room(cgeom, STLB))
    ndata = max(0, min(ndata, nboth - ncode))
    ncode = min(ncode, nboth)
    for i in range(ncode + ndata):
        l1 = ITLB if i < ncode else DTLB
        key = base | (i + (0 if l1 == ITLB else 1 << 20))  # code and data pages differ
        if lookup(ctag, cstamp, cgeom, clast, cclock, l1, key) >= 0:
            continue
        if lookup(ctag, cstamp, cgeom, clast, cclock, STLB, key) < 0:
            C[K.VMM_TLB_FILLS] += 1  # the VMM's own TLB miss (its walk is in the handler cost)
            insert(ctag, cstamp, cval, cgeom, clast, cclock, STLB, key, 0)
        insert(ctag, cstamp, cval, cgeom, clast, cclock, l1, key, 0)
    for i in range(S[X.S_VMM_LINES]):
        # VMM data lines: host frames below the guest's backing, never a guest's
        if lookup_line(st, (np.int64(1) << 40) + i, True) != LEVEL_L1:
            C[K.VMM_LINE_FILLS] += 1
    retouch(ctag, cstamp, clast, cclock, ITLB, ik, ii)
    retouch(ctag, cstamp, clast, cclock, DTLB, dk, di)
    retouch(ctag, cstamp, clast, cclock, L1D, lk, li)


@njit(cache=True, _nrt=False)
def vm_exit(st, reason):
    """Count one VM exit; without VPID the TLBs are flushed on the way out and back in; the
    VMM's handler leaves its footprint in the TLBs and caches."""
    S, C = st.scalars, st.counters
    C[reason] += 1
    if S[X.S_VPID] == 0:
        flush_tlbs(st)
    vmm_footprint(st)


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
    b = p2m[gfn >> 9]  # 2 MiB and 1 GiB host pages alike: one entry per 2 MiB
    if b < 0:
        return -1
    return b + (gfn & 511)


@njit(cache=True)
def populate_all(st, frames):
    """Boot population: back guest frames 0..frames-1 (hfn = S_HOST_BASE + gfn; whole host
    pages, so the last large one may reach past ``frames``) and build the EPT pages that map
    them, without exits (the VM is being built)."""
    S, eup, p2m = st.scalars, st.ept_upper, st.p2m
    leaf = S[X.S_HOST_LEAF]
    base = S[X.S_HOST_BASE]
    used = S[X.S_EUP_USED:X.S_EUP_USED + 1]
    step = np.int64(1) << (9 * leaf)  # 4 KiB frames per host page
    for g in range(0, frames, step):
        if leaf == 0:
            p2m[g] = base + g
        else:
            for c in range(g >> 9, min((g + step) >> 9, p2m.shape[0])):
                p2m[c] = base + (c << 9)
        for lv in range(S[X.S_EPT_LEVELS] - 1, leaf, -1):
            k = make_key(0, lv, g >> (9 * lv))
            if find(eup, k) < 0:
                put(eup, used, k, alloc_hfn(st, 1), 0)


@njit(cache=True, _nrt=False)
def back_frame(st, gfn):
    """Back ``gfn`` if needed (one exit, which backs the whole host page around it);
    returns its hfn."""
    S, C, eup, p2m = st.scalars, st.counters, st.ept_upper, st.p2m
    h = hfn_of(st, gfn)
    if h >= 0:
        return h
    leaf = S[X.S_HOST_LEAF]
    if leaf == 0:
        h = alloc_hfn(st, 1)
        p2m[gfn] = h
        C[K.HOST_FRAMES] += 1
    else:  # a whole 2 MiB or 1 GiB host page: 512 or 262,144 contiguous host frames
        span = np.int64(1) << (9 * leaf)
        first = gfn & ~(span - 1)
        b = alloc_hfn(st, span)
        for c in range(first >> 9, min((first + span) >> 9, p2m.shape[0])):
            p2m[c] = b + (c << 9) - first
        C[K.HOST_FRAMES] += span
        h = b + (gfn - first)
    used = S[X.S_EUP_USED:X.S_EUP_USED + 1]
    for lv in range(S[X.S_EPT_LEVELS] - 1, leaf, -1):
        k = make_key(0, lv, gfn >> (9 * lv))
        if find(eup, k) < 0:
            put(eup, used, k, alloc_hfn(st, 1), 0)
    cur = S[X.S_CUR]  # agile: as the running address space is walked (none: as new ones start)
    if S[X.S_MODE] == X.MODE_NESTED or (S[X.S_MODE] == X.MODE_AGILE and (
            st.spaces[cur, X.SL_AGILE_NESTED] != 0 if cur >= 0
            else S[X.S_AGILE_START_NESTED] != 0)):
        vm_exit(st, K.EXIT_EPT_VIOLATION)
    else:
        vm_exit(st, K.EXIT_POPULATE)
    return h
