"""Shadow paging: the VMM's gVA->hPA table kept in sync with the guest's page tables.

- A guest page-table page is write-protected once the VMM shadows it (a shadow page
  exists for it); a guest write to it exits and is emulated, and the VMM propagates
  the new entry into the shadow.
- A page fault exits: if the guest entry allows the access it is a *hidden* fault
  (fill the shadow path from the guest table), else a *true* fault that is injected.
- With out-of-sync leaf pages (Xen's Shadow 3), the first write to a leaf page-table
  page exits and unsyncs it (an ``unsync`` exit: the page becomes writable, the write is
  not emulated); later writes do not exit and only invalidate the shadow
  entry; CR3 loads resync every unsynced page.  At most ``oos_pages`` at once.
- Shadow tables are built per address space on its first CR3 load and torn down at
  exit or exec; the shadow of a dying process is dropped at its first trapping
  teardown write (Xen's early unshadow).
"""

from __future__ import annotations

from numba import njit

from .. import counters as K
from .. import state as X
from ..guest.pagetable import STRIDE, TOMB, collect, find, make_key, put, remove
from .p2m import alloc_hfn, free_hfn, vm_exit


@njit(cache=True, _nrt=False)
def is_shadowed(st, slot, lv, va):
    """Is the guest page-table page holding the level-``lv`` entry for ``va`` shadowed (and
    so write-protected)?  Under agile paging a switching entry above it means it is walked
    nested instead (``vmm.agile``)."""
    S, sup, slots = st.scalars, st.shadow_upper, st.spaces
    if lv == S[X.S_LEVELS] - 1:
        return slots[slot, X.SL_SROOT] >= 0
    i = find(sup, make_key(slot, lv + 1, va >> (12 + S[X.S_BITS] * (lv + 1))))
    return i >= 0 and sup[i * STRIDE + 2] != X.AGILE_SWITCH


@njit(cache=True, _nrt=False, inline="always")
def traps(st, slot):
    """Do the VMM's CR3-load, INVLPG and flush intercepts apply to address space ``slot``?
    Under shadow paging always; under agile paging when its root is shadowed."""
    mode = st.scalars[X.S_MODE]
    return mode == X.MODE_SHADOW or (mode == X.MODE_AGILE and slot >= 0
                                     and st.spaces[slot, X.SL_AGILE_NESTED] == 0)


@njit(cache=True, _nrt=False)
def _propagate_leaf(st, slot, va):
    """Make the shadow leaf for ``va`` match the guest leaf (or drop it)."""
    S, C, gleaf, sleaf = st.scalars, st.counters, st.guest_leaf, st.shadow_leaf
    sk = make_key(slot, 0, va >> 12)
    g = find(gleaf, sk)
    if g < 0:
        remove(sleaf, sk)
        return
    gv = gleaf[g * STRIDE + 1]
    put(sleaf, S[X.S_SLEAF_USED:X.S_SLEAF_USED + 1], sk,
        (gleaf[g * STRIDE + 2] << 1) | (gv & 1), 0)
    C[K.SHADOW_FILLS] += 1


@njit(cache=True, _nrt=False)
def oos_resync_all(st):
    S, C = st.scalars, st.counters
    C[K.OOS_RESYNCS] += S[X.S_OOS_N]
    S[X.S_OOS_N] = 0


@njit(cache=True, _nrt=False)
def oos_drop_slot(st, slot):
    """Forget unsynced pages of an address space that is being torn down."""
    S, oos = st.scalars, st.oos_pages
    j = 0
    for i in range(S[X.S_OOS_N]):
        if (oos[i] >> 48) != slot:
            oos[j] = oos[i]
            j += 1
    S[X.S_OOS_N] = j


@njit(cache=True, _nrt=False)
def oos_drop_range(st, slot, lo, hi):
    """Forget unsynced leaf pages of ``slot`` that map pages [lo, hi) (their shadows go)."""
    S, oos = st.scalars, st.oos_pages
    bits = S[X.S_BITS]
    j = 0
    for i in range(S[X.S_OOS_N]):
        p = oos[i] & ((1 << 45) - 1)
        if (oos[i] >> 48) != slot or not (lo >> bits) <= p < (hi >> bits):
            oos[j] = oos[i]
            j += 1
    S[X.S_OOS_N] = j


@njit(cache=True, _nrt=False)
def oos_resync_page(st, slot, va):
    """INVLPG of an address in an unsynced page resyncs that page (Xen)."""
    S, C, oos = st.scalars, st.counters, st.oos_pages
    pk = make_key(slot, 1, va >> (12 + S[X.S_BITS]))
    for i in range(S[X.S_OOS_N]):
        if oos[i] == pk:
            C[K.OOS_RESYNCS] += 1
            for j in range(i, S[X.S_OOS_N] - 1):
                oos[j] = oos[j + 1]
            S[X.S_OOS_N] -= 1
            return


@njit(cache=True, _nrt=False)
def on_guest_pte_write(st, slot, lv, va):
    """The guest wrote its level-``lv`` entry for ``va`` (already updated in the guest table):
    a write to a shadowed page exits (called under shadow paging, and by ``vmm.agile`` for
    the shadowed part under agile paging)."""
    S, oos = st.scalars, st.oos_pages
    if not is_shadowed(st, slot, lv, va):
        return
    if lv == 0 and S[X.S_OOS] != 0:
        pk = make_key(slot, 1, va >> (12 + S[X.S_BITS]))
        for i in range(S[X.S_OOS_N]):
            if oos[i] == pk:  # already out of sync: no exit, the shadow entry goes stale
                remove(st.shadow_leaf, make_key(slot, 0, va >> 12))
                return
        vm_exit(st, K.EXIT_UNSYNC)  # unsynced, not emulated (Xen 3.3 sh_unsync)
        _propagate_leaf(st, slot, va)
        if S[X.S_OOS_N] == S[X.S_OOS_MAX]:  # full: resync the oldest
            st.counters[K.OOS_RESYNCS] += 1
            for j in range(S[X.S_OOS_N] - 1):
                oos[j] = oos[j + 1]
            S[X.S_OOS_N] -= 1
        oos[S[X.S_OOS_N]] = pk
        S[X.S_OOS_N] += 1
        return
    vm_exit(st, K.EXIT_PTE_WRITE)
    if lv == 0:
        _propagate_leaf(st, slot, va)
    # An upper entry now points to a new, not yet shadowed, guest page: nothing to propagate.


@njit(cache=True, _nrt=False, inline="always")
def pages_per_shadow(S, lv):
    """Host pages of one shadow of a guest page-table page at level ``lv``: 1, but a PAE
    shadow of a 2-level guest ("2-on-3", Xen) takes 4 pages for the top (its four 512-entry
    page directories) and 2 for each 1,024-entry guest page table."""
    if S[X.S_PAE_SHADOW] == 0:
        return 1
    return 4 if lv == S[X.S_LEVELS] - 1 else 2


@njit(cache=True, _nrt=False)
def free_shadow(st, h, lv):
    """Free the shadow page(s) at ``h`` that a level-``lv`` shadow entry points to (the root
    when ``lv`` is the top level); returns how many."""
    n = pages_per_shadow(st.scalars, lv)
    for i in range(n):
        free_hfn(st, h + i)
    return n


@njit(cache=True, _nrt=False)
def new_root(st, slot):
    S, C, slots = st.scalars, st.counters, st.spaces
    n = pages_per_shadow(S, S[X.S_LEVELS] - 1)
    slots[slot, X.SL_SROOT] = alloc_hfn(st, n)
    slots[slot, X.SL_NSHADOW] = n
    C[K.SHADOW_ROOTS] += 1
    C[K.SHADOW_PAGES] += n


@njit(cache=True, _nrt=False)
def fill(st, slot, va):
    """Hidden fault: build the missing shadow levels for ``va`` from the guest table."""
    S, C, sup, slots = st.scalars, st.counters, st.shadow_upper, st.spaces
    if slots[slot, X.SL_SROOT] < 0:
        new_root(st, slot)
    used = S[X.S_SUP_USED:X.S_SUP_USED + 1]
    for lv in range(S[X.S_LEVELS] - 1, 0, -1):
        k = make_key(slot, lv, va >> (12 + S[X.S_BITS] * lv))
        if find(sup, k) < 0:
            n = pages_per_shadow(S, lv)
            put(sup, used, k, alloc_hfn(st, n), 0)
            slots[slot, X.SL_NSHADOW] += n
            C[K.SHADOW_PAGES] += n
            C[K.SHADOW_FILLS] += 1
    _propagate_leaf(st, slot, va)
    _prefetch(st, slot, va)


@njit(cache=True, _nrt=False)
def _prefetch(st, slot, va):
    """Xen's sh_prefetch: shadow the guest entries that follow the faulting one in the same
    leaf table, up to ``shadow_prefetch`` of them, stopping at one already shadowed."""
    S, C, gleaf, sleaf = st.scalars, st.counters, st.guest_leaf, st.shadow_leaf
    vpn = va >> 12
    bits = 9 if S[X.S_PAE_SHADOW] != 0 else S[X.S_BITS]  # entries of one shadow leaf page
    last = min(vpn + S[X.S_SH_PREFETCH], vpn | ((1 << bits) - 1))
    used = S[X.S_SLEAF_USED:X.S_SLEAF_USED + 1]
    for v in range(vpn + 1, last + 1):
        sk = make_key(slot, 0, v)
        if find(sleaf, sk) >= 0:
            break
        g = find(gleaf, sk)
        if g < 0:
            continue  # Xen writes a "not present" shadow entry: nothing to model
        gv = gleaf[g * STRIDE + 1]
        put(sleaf, used, sk, (gleaf[g * STRIDE + 2] << 1) | (gv & 1), 0)
        C[K.SHADOW_PREFETCHED] += 1


@njit(cache=True, _nrt=False)
def destroy(st, slot):
    """Tear down one address space's shadow table; returns shadow pages freed."""
    S, C, sup, sleaf, slots = st.scalars, st.counters, st.shadow_upper, st.shadow_leaf, st.spaces
    if slots[slot, X.SL_SROOT] < 0:
        return 0
    scr = st.scratch
    nl, nu = collect(sup, sleaf, slot, S[X.S_LEVELS], S[X.S_BITS], 0, S[X.S_VA_PAGES], scr)
    for t in range(nl):
        remove(sleaf, make_key(slot, 0, scr[0, t]))
    for i in range(nu):
        j = find(sup, make_key(slot, scr[1, i], scr[2, i]))
        if sup[j * STRIDE + 2] != X.AGILE_SWITCH:  # (agile: a switching entry has no shadow)
            free_shadow(st, sup[j * STRIDE + 1], scr[1, i])
        sup[j * STRIDE] = TOMB
    free_shadow(st, slots[slot, X.SL_SROOT], S[X.S_LEVELS] - 1)
    freed = slots[slot, X.SL_NSHADOW]
    C[K.SHADOW_PAGES_FREED] += freed
    C[K.SHADOW_ROOTS] += 1
    slots[slot, X.SL_SROOT] = -1
    slots[slot, X.SL_NSHADOW] = 0
    oos_drop_slot(st, slot)
    return freed
