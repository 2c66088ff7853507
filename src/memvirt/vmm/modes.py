"""One memory access through the MMU under each paging mode (native, shadow, nested).

The TLBs hold final translations (gVA -> hPA) in every mode; what differs is the
walk that fills them and who handles the faults:

- native: 1D walk of the guest table; faults handled by the guest.
- nested: 2D walk (guest table, each pointer through the EPT); faults handled by
  the guest at native cost, no exit.
- shadow: 1D walk of the shadow table; every miss in it exits, and the VMM either
  fills the shadow (hidden fault) or injects a true fault into the guest.
- agile: the shadow table's walk until a switching entry, then the guest table's 2D walk
  (``vmm.agile``): a miss in the shadow part is handled as under shadow paging, one in a
  nested part as under nested paging.
"""

from __future__ import annotations

from numba import njit

from .. import counters as K
from .. import state as X
from ..guest import os as guest
from ..guest.pagetable import STRIDE, find, make_key
from ..hw.cache import DTLB, ITLB, STLB, insert, invalidate, lookup
from ..hw.tlb import tlb_key
from ..hw.walk import walk_1d, walk_2d, walk_agile, walk_shadow_pae
from . import shadow
from .p2m import vm_exit


@njit(cache=True, _nrt=False, inline="always")
def _walk(st, slot, va, store):
    """Walk until the translation allows the access; returns the TLB entry's value
    (physical frame << 1 | write permission), or -1 after handling a fault (the access is
    retried).  The frame is the one the caches see: the guest frame natively, the host
    frame under virtualization."""
    S, gup, gleaf, sup, sleaf, slots = st.scalars, st.guest_upper, st.guest_leaf, st.shadow_upper, st.shadow_leaf, st.spaces
    mode = S[X.S_MODE]
    shadowed = mode == X.MODE_SHADOW  # this walk's leaf is a shadow entry
    if mode == X.MODE_NESTED:
        i = walk_2d(st, slot, va)
    elif mode == X.MODE_AGILE:
        i, guest_leaf = walk_agile(st, slot, va)
        shadowed = not guest_leaf
    elif shadowed and S[X.S_PAE_SHADOW] != 0:
        i = walk_shadow_pae(st, slot, va)
    else:  # one call site: the walk inlines once
        i = walk_1d(st, sup if shadowed else gup, sleaf if shadowed else gleaf, slot,
                    slots[slot, X.SL_SROOT] if shadowed else slots[slot, X.SL_ROOT_GFN], va,
                    S[X.S_ENTRY_BYTES])  # shadows of a 32-bit guest: 4-byte too (PAE: its walk)
    if shadowed:
        if i >= 0:
            v = sleaf[i * STRIDE + 1]  # hfn << 1 | W
            if store == 0 or (v & 1) == 1:
                return v
        g = find(gleaf, make_key(slot, 0, va >> 12))
        if g >= 0 and (store == 0 or (gleaf[g * STRIDE + 1] & 1) == 1):
            vm_exit(st, K.EXIT_PF_HIDDEN)
            shadow.fill(st, slot, va)
        else:
            vm_exit(st, K.EXIT_PF_TRUE)
            guest.page_fault(st, slot, va, g)
        return -1
    if i >= 0:
        v = gleaf[i * STRIDE + 1]  # gfn << 2 | COW << 1 | W
        if store == 0 or (v & 1) == 1:
            frame = (v >> 2) if mode == X.MODE_NATIVE else gleaf[i * STRIDE + 2]
            return (frame << 1) | (v & 1)
    guest.page_fault(st, slot, va, i)  # (agile: a fault in a nested part, no exit)
    return -1


@njit(cache=True, _nrt=False, inline="always")
def access(st, slot, va, store, fetch):
    """Translate one access (one page).  Returns the TLB entry's value (physical frame << 1 |
    write permission), or -1 if it never settles (internal error)."""
    C, ctag, cstamp, cval, cgeom, clast, cclock = st.counters, st.cache_tag, st.cache_stamp, st.cache_val, st.cache_geom, st.cache_last, st.cache_clock
    C[K.ACCESSES] += 1
    key = tlb_key(slot, va >> 12)
    l1 = ITLB if fetch else DTLB
    i = lookup(ctag, cstamp, cgeom, clast, cclock, l1, key)
    if i >= 0:
        C[K.ITLB_HIT if fetch else K.DTLB_HIT] += 1
        if store == 0 or (cval[i] & 1) == 1:
            return cval[i]
        invalidate(ctag, cstamp, cgeom, clast, l1, key)  # write to a read-only (COW) translation
        invalidate(ctag, cstamp, cgeom, clast, STLB, key)
    else:
        C[K.ITLB_MISS if fetch else K.DTLB_MISS] += 1
        j = lookup(ctag, cstamp, cgeom, clast, cclock, STLB, key)
        if j >= 0:
            C[K.STLB_HIT] += 1
            v = cval[j]
            if store == 0 or (v & 1) == 1:
                insert(ctag, cstamp, cval, cgeom, clast, cclock, l1, key, v)
                return v
            invalidate(ctag, cstamp, cgeom, clast, STLB, key)
        elif cgeom[STLB, 1] > 0:
            C[K.STLB_MISS] += 1
    for _ in range(8):
        v = _walk(st, slot, va, store)
        if v >= 0:
            insert(ctag, cstamp, cval, cgeom, clast, cclock, STLB, key, v)
            insert(ctag, cstamp, cval, cgeom, clast, cclock, l1, key, v)
            return v
    return -1
