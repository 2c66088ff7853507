"""Page walkers: the one-dimensional walk (native, shadow) and the two-dimensional walk (EPT).

A walk starts at the deepest paging-structure-cache hit and reads one entry per
remaining level; every read is a *walk reference*, looked up in the cache hierarchy
(``hw/memory.py``: 64-byte lines of host-physical addresses) to decide its latency.  Under nested
paging every guest table pointer is a guest-physical address that must itself be
translated through the EPT (nested TLB, nested PSC, then EPT references), and so
is the final data frame: (n+1)(m+1)-1 references with every cache off.  With large host
pages the EPT walk ends at the entry that maps the page (``S_HOST_LEAF`` = L: 1 for a 2 MiB
PDE, 2 for a 1 GiB PDPTE), m - L references per translation: (n+1)(m-L)+n in all; the nested
PSC caches only the EPT levels above the leaf.

Paging-structure caches hold, per upper level L, the entry that covers the
address at that level, keyed by (address space, level, prefix); their payload is
the physical frame of the next table (host-physical under EPT: Intel's combined
mappings), so a hit skips those levels in both dimensions.
"""

from __future__ import annotations

from numba import njit

from .. import counters as K
from .. import state as X
from ..guest.pagetable import STRIDE, find, make_key
from ..vmm.p2m import back_frame, hfn_of
from .cache import NPSC0, NTLB, PSC0, insert, lookup
from .memory import lookup_line


@njit(cache=True, _nrt=False, inline="always")
def level_shift(S, lv):
    return 12 + S[X.S_BITS] * lv


@njit(cache=True, _nrt=False, inline="always")
def level_index(S, va, lv):
    return (va >> level_shift(S, lv)) & ((1 << S[X.S_BITS]) - 1)


@njit(cache=True, _nrt=False, inline="always")
def ref(st, paddr):
    """One walk reference to (host-)physical byte address ``paddr``, through the caches;
    returns the level that served it."""
    C = st.counters
    C[K.WALK_REFS] += 1
    level = lookup_line(st, paddr >> 6, st.scalars[X.S_WALK_L1D] != 0)
    C[K.REF_L1 + level] += 1
    return level


@njit(cache=True, _nrt=False, inline="always")
def psc_start(st, slot, va, root):
    """Where a walk starts: (level, table frame) after the deepest paging-structure-cache
    hit, or (top level, ``root``) when every PSC misses."""
    S, C, ctag, cstamp, cval, cgeom, clast, cclock = st.scalars, st.counters, st.cache_tag, st.cache_stamp, st.cache_val, st.cache_geom, \
        st.cache_last, st.cache_clock
    n = S[X.S_LEVELS]
    for probe in range(1, n):
        i = lookup(ctag, cstamp, cgeom, clast, cclock, PSC0 + probe,
                   make_key(slot, probe, va >> level_shift(S, probe)))
        if i >= 0:
            C[K.PSC_HIT] += 1
            return probe - 1, cval[i]
    return n - 1, root


@njit(cache=True, _nrt=False, inline="always")
def walk_1d(st, up, leaf, slot, root, va, ebytes):
    """Walk a one-dimensional table (guest table natively, shadow table under shadow paging)
    whose entries are ``ebytes`` bytes.

    Returns the leaf entry's slot in ``leaf``, or -1 when an entry on the way is not present.
    """
    S, C, ctag, cstamp, cval, cgeom, clast, cclock = st.scalars, st.counters, st.cache_tag, st.cache_stamp, st.cache_val, st.cache_geom, \
        st.cache_last, st.cache_clock
    C[K.WALKS] += 1
    lv, table = psc_start(st, slot, va, root)
    while True:
        ref(st, (table << 12) + level_index(S, va, lv) * ebytes)
        if lv == 0:
            return find(leaf, make_key(slot, 0, va >> 12))
        k = make_key(slot, lv, va >> level_shift(S, lv))
        i = find(up, k)
        if i < 0:
            return -1
        table = up[i * STRIDE + 1]
        insert(ctag, cstamp, cval, cgeom, clast, cclock, PSC0 + lv, k, table)
        lv -= 1


@njit(cache=True, _nrt=False, inline="always")
def walk_shadow_pae(st, slot, va):
    """Walk the PAE-format shadow of a 2-level (32-bit) guest (Xen's "2-on-3" shadows).

    The four page-directory pointers are loaded into registers when CR3 is loaded, so a walk
    reads at most two 8-byte entries: the page-directory entry (shadow root pages: one 4 KiB
    page per GiB, 512 entries of 2 MiB) and the page-table entry (each 1,024-entry guest page
    table is shadowed by two 512-entry pages, one per 2 MiB half).  The PDE cache holds 2 MiB
    regions.  The shadow hash tables keep the guest's geometry (``vmm.shadow``).  Returns
    the leaf entry's slot in the shadow leaf table, or -1.
    """
    C, slots = st.counters, st.spaces
    ctag, cstamp, cval = st.cache_tag, st.cache_stamp, st.cache_val
    cgeom, clast, cclock = st.cache_geom, st.cache_last, st.cache_clock
    C[K.WALKS] += 1
    pde_key = make_key(slot, 1, va >> 21)
    i = lookup(ctag, cstamp, cgeom, clast, cclock, PSC0 + 1, pde_key)
    if i >= 0:
        C[K.PSC_HIT] += 1
        table = cval[i]
    else:
        ref(st, ((slots[slot, X.SL_SROOT] + ((va >> 30) & 3)) << 12) + ((va >> 21) & 511) * 8)
        j = find(st.shadow_upper, make_key(slot, 1, va >> 22))
        if j < 0:
            return -1
        table = st.shadow_upper[j * STRIDE + 1] + ((va >> 21) & 1)
        insert(ctag, cstamp, cval, cgeom, clast, cclock, PSC0 + 1, pde_key, table)
    ref(st, (table << 12) + ((va >> 12) & 511) * 8)
    return find(st.shadow_leaf, make_key(slot, 0, va >> 12))


@njit(cache=True, _nrt=False, inline="always")
def translate_gpa(st, gfn, known_hfn):
    """Nested dimension: guest frame -> host frame through the nested TLB and the EPT.

    ``known_hfn`` is the backing the guest entry already carries (or -1): the walk's
    references are the same either way, but it spares the simulator a random p2m read.
    """
    S, C, ctag, cstamp, cval, cgeom, clast, cclock = st.scalars, st.counters, st.cache_tag, st.cache_stamp, st.cache_val, st.cache_geom, \
        st.cache_last, st.cache_clock
    eup = st.ept_upper
    i = lookup(ctag, cstamp, cgeom, clast, cclock, NTLB, gfn)
    if i >= 0:
        C[K.NTLB_HIT] += 1
        return cval[i]
    C[K.NTLB_MISS] += 1
    m = S[X.S_EPT_LEVELS]
    leaf = S[X.S_HOST_LEAF]
    lv = m - 1
    table = S[X.S_EPT_ROOT]
    for probe in range(leaf + 1, m):
        j = lookup(ctag, cstamp, cgeom, clast, cclock, NPSC0 + probe,
                   make_key(0, probe, gfn >> (9 * probe)))
        if j >= 0:
            C[K.NPSC_HIT] += 1
            lv = probe - 1
            table = cval[j]
            break
    h = -1
    while True:
        C[K.NREF_L1 + ref(st, (table << 12) + ((gfn >> (9 * lv)) & 511) * 8)] += 1
        C[K.WALK_REFS_NESTED] += 1
        if lv == leaf:
            h = known_hfn if known_hfn >= 0 else hfn_of(st, gfn)
            if h < 0:  # unbacked (cannot happen for frames the guest allocated) -> EPT violation
                h = back_frame(st, gfn)
            break
        k = make_key(0, lv, gfn >> (9 * lv))
        e = find(eup, k)
        if e < 0:
            h = back_frame(st, gfn)
            break
        table = eup[e * STRIDE + 1]
        insert(ctag, cstamp, cval, cgeom, clast, cclock, NPSC0 + lv, k, table)
        lv -= 1
    insert(ctag, cstamp, cval, cgeom, clast, cclock, NTLB, gfn, h)
    return h


@njit(cache=True, _nrt=False, inline="always")
def _walk_nested(st, slot, va, lv, thfn, tgfn, known, flag):
    """The two-dimensional part of a walk, from the level-``lv`` guest table: at host frame
    ``thfn``, or (``thfn`` < 0) at guest frame ``tgfn`` whose backing ``known`` (or -1) the
    walk translates first.  Paging-structure-cache entries it fills carry ``flag`` in their
    payload (agile paging marks guest tables so).  Returns the guest leaf slot or -1.

    One loop, one call site for the nested translation (of each guest table and, last, of
    the data frame), so the whole walk inlines into the access path once.
    """
    S, ctag, cstamp, cval, cgeom, clast, cclock = st.scalars, st.cache_tag, st.cache_stamp, \
        st.cache_val, st.cache_geom, st.cache_last, st.cache_clock
    gup, gleaf = st.guest_upper, st.guest_leaf
    psc_key = -1  # PSC entry to fill once the child table's host frame is known
    psc_lv = 0
    leaf_i = -1
    while True:
        if thfn < 0:
            thfn = translate_gpa(st, tgfn, known)
            if lv < 0:  # that was the data frame: the walk is complete
                return leaf_i
            if psc_key >= 0:
                insert(ctag, cstamp, cval, cgeom, clast, cclock, PSC0 + psc_lv, psc_key,
                       thfn | flag)
        ref(st, (thfn << 12) + level_index(S, va, lv) * S[X.S_ENTRY_BYTES])
        if lv == 0:
            leaf_i = find(gleaf, make_key(slot, 0, va >> 12))
            if leaf_i < 0:
                return -1
            tgfn = gleaf[leaf_i * STRIDE + 1] >> 2
            known = gleaf[leaf_i * STRIDE + 2]
            psc_key = -1
        else:
            k = make_key(slot, lv, va >> level_shift(S, lv))
            i = find(gup, k)
            if i < 0:
                return -1
            tgfn = gup[i * STRIDE + 1]
            known = gup[i * STRIDE + 2]
            psc_key = k
            psc_lv = lv
        thfn = -1
        lv -= 1


@njit(cache=True, _nrt=False, inline="always")
def walk_2d(st, slot, va):
    """Two-dimensional walk of the guest table under EPT.  Returns the guest leaf slot or -1."""
    slots = st.spaces
    st.counters[K.WALKS] += 1
    lv, thfn = psc_start(st, slot, va, -1)
    return _walk_nested(st, slot, va, lv, thfn, slots[slot, X.SL_ROOT_GFN],
                        slots[slot, X.SL_ROOT_HFN], 0)


@njit(cache=True, _nrt=False, inline="always")
def walk_agile(st, slot, va):
    """Agile paging's walk (Gandhi et al., ISCA 2016; ``vmm.agile``): the shadow table from
    its root until a switching entry, whose value is the host frame of the guest table below,
    then the guest table two-dimensionally.  A wholly nested address space walks as under
    nested paging.  Returns (leaf slot or -1, whether it is a guest leaf).

    With caches off, a switch below the level-``lv`` shadow entry reads n - 1 - lv shadow
    entries and lv + 1 guest entries, and translates lv + 1 guest frames (the tables below
    the first, and the data frame) through m - L EPT levels: n + (lv + 1)(m - L) references
    (n levels, m EPT levels, L the host leaf level); wholly nested: (n + 1)(m - L) + n.
    """
    S, C, ctag, cstamp, cval, cgeom, clast, cclock = st.scalars, st.counters, st.cache_tag, \
        st.cache_stamp, st.cache_val, st.cache_geom, st.cache_last, st.cache_clock
    sup, slots = st.shadow_upper, st.spaces
    if slots[slot, X.SL_AGILE_NESTED] != 0:
        return walk_2d(st, slot, va), True
    C[K.WALKS] += 1
    lv, table = psc_start(st, slot, va, slots[slot, X.SL_SROOT])
    while table & X.AGILE_GUEST == 0:
        ref(st, (table << 12) + level_index(S, va, lv) * 8)
        if lv == 0:
            return find(st.shadow_leaf, make_key(slot, 0, va >> 12)), False
        k = make_key(slot, lv, va >> level_shift(S, lv))
        i = find(sup, k)
        if i < 0:
            return -1, False
        table = sup[i * STRIDE + 1]
        if sup[i * STRIDE + 2] == X.AGILE_SWITCH:
            table |= X.AGILE_GUEST
        insert(ctag, cstamp, cval, cgeom, clast, cclock, PSC0 + lv, k, table)
        lv -= 1
    return _walk_nested(st, slot, va, lv, table & (X.AGILE_GUEST - 1), -1, -1,
                        X.AGILE_GUEST), True
