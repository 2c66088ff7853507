"""Agile paging (Gandhi, Hill, Swift, ISCA 2016): shadow paging for the stable upper levels
of a guest page table, nested paging for the subtrees the guest keeps writing.

The VMM keeps a shadow table per address space as under shadow paging, but a shadow upper
entry may be a *switching entry* (aux word ``X.AGILE_SWITCH``): its value is the host frame
of the guest page-table page below it, and the hardware walk, reaching it, continues in the
guest table with two-dimensional (EPT) translations for the levels below (``hw.walk``).
An address space may also be wholly nested (``SL_AGILE_NESTED``): its walks are nested
paging's walks from the guest CR3.

- Shadowed guest page-table pages are write-protected: writes trap exactly as under shadow
  paging (``vmm.shadow``), and count towards the policy's threshold (kept in the aux-free
  ``spare`` word of the shadow entry that maps the page, or per address space for the root).
  A page written more than ``S_AGILE_WRITES`` times between two scans moves to nested with
  its subtree: its shadow (and every shadow below it) is freed and the entry above becomes a
  switching entry (``to_nested``).
- Nested page-table pages are not write-protected: writes do not exit; they only set the
  dirty flag of the subtree (the D bits of the EPT entries mapping them, which the VMM reads
  at its scan).  Faults in a nested part go to the guest without an exit.
- CR3 loads, INVLPG and guest TLB flushes exit only for address spaces whose root is
  shadowed (the VMM must switch or fix its shadow); a wholly nested one runs as under nested
  paging.
- New address spaces may start wholly nested (short-lived processes stay nested): one that
  has lived a whole scan interval is shadowed at the next scan.
- Every ``scan_instructions`` the VMM scans (``scan``): nested subtrees and address spaces
  that were not written since the last scan, and were nested before it, move back to shadow
  (an empty shadow, filled by hidden faults); write counts start again.

With every subtree shadowed this is shadow paging exactly; with every address space nested,
nested paging exactly (tests/test_agile.py).
"""

from __future__ import annotations

from numba import njit

from .. import counters as K
from .. import state as X
from ..guest.pagetable import STRIDE, TOMB, collect, find, make_key
from ..hw.tlb import flush_psc
from . import shadow
from .p2m import alloc_hfn, back_frame


@njit(cache=True, _nrt=False, inline="always")
def _shift(S, lv):
    return 12 + S[X.S_BITS] * lv


@njit(cache=True, _nrt=False)
def switch_above(st, slot, lv, va):
    """The shadow-table slot of the switching entry above the guest page-table page that holds
    the level-``lv`` entries for ``va`` (searching from the top), or -1."""
    S, sup = st.scalars, st.shadow_upper
    for el in range(S[X.S_LEVELS] - 1, lv, -1):
        i = find(sup, make_key(slot, el, va >> _shift(S, el)))
        if i < 0:
            return -1
        if sup[i * STRIDE + 2] == X.AGILE_SWITCH:
            return i
    return -1


@njit(cache=True, _nrt=False)
def on_guest_pte_write(st, slot, lv, va):
    """The guest wrote its level-``lv`` entry for ``va`` (already updated in its table): the
    VMM's side under every mode (nothing natively or under nested paging)."""
    S, slots, sup = st.scalars, st.spaces, st.shadow_upper
    mode = S[X.S_MODE]
    if mode == X.MODE_SHADOW:
        shadow.on_guest_pte_write(st, slot, lv, va)
        return
    if mode != X.MODE_AGILE:
        return
    top = S[X.S_LEVELS] - 1
    if slots[slot, X.SL_AGILE_NESTED] != 0:
        slots[slot, X.SL_AGILE_DIRTY] |= X.AGILE_DIRTY
        return
    if shadow.is_shadowed(st, slot, lv, va):
        shadow.on_guest_pte_write(st, slot, lv, va)
        limit = S[X.S_AGILE_WRITES]
        if lv == top:
            slots[slot, X.SL_AGILE_WRITES] += 1
            if limit >= 0 and slots[slot, X.SL_AGILE_WRITES] > limit:
                to_nested(st, slot, lv, va)
            return
        i = find(sup, make_key(slot, lv + 1, va >> _shift(S, lv + 1)))
        sup[i * STRIDE + 3] += 1
        if limit >= 0 and sup[i * STRIDE + 3] > limit:
            to_nested(st, slot, lv, va)
        return
    i = switch_above(st, slot, lv, va)
    if i >= 0:
        sup[i * STRIDE + 3] |= X.AGILE_DIRTY
    # else: a page the shadow does not cover yet (not write-protected): nothing to do


@njit(cache=True, _nrt=False)
def to_nested(st, slot, lv, va):
    """Move the guest page-table page holding the level-``lv`` entries for ``va`` (a shadowed
    one: ``shadow.is_shadowed``), with its subtree, to nested: free its shadows, make the
    entry above a switching entry (or, for the root, the whole address space nested)."""
    S, C, sup, sleaf, slots = st.scalars, st.counters, st.shadow_upper, st.shadow_leaf, st.spaces
    C[K.AGILE_TO_NESTED] += 1
    flush_psc(st)  # cached entries of the shadows that go
    if lv == S[X.S_LEVELS] - 1:
        shadow.destroy(st, slot)
        slots[slot, X.SL_AGILE_NESTED] = 1
        slots[slot, X.SL_AGILE_DIRTY] = X.AGILE_YOUNG
        slots[slot, X.SL_AGILE_WRITES] = 0
        return
    bits = S[X.S_BITS]
    lo = (va >> _shift(S, lv + 1)) << (bits * (lv + 1))  # the subtree's first page
    hi = lo + (1 << (bits * (lv + 1)))
    scr = st.scratch
    nl, nu = collect(sup, sleaf, slot, S[X.S_LEVELS], bits, lo, hi, scr)
    for t in range(nl):
        sleaf[find(sleaf, make_key(slot, 0, scr[0, t])) * STRIDE] = TOMB
    freed = 0
    for u in range(nu):
        el = scr[1, u]
        if el <= lv:  # the shadows of the subtree's lower tables
            j = find(sup, make_key(slot, el, scr[2, u]))
            if sup[j * STRIDE + 2] != X.AGILE_SWITCH:
                freed += shadow.free_shadow(st, sup[j * STRIDE + 1], el)
            sup[j * STRIDE] = TOMB
    shadow.oos_drop_range(st, slot, lo, hi)
    k = make_key(slot, lv + 1, va >> _shift(S, lv + 1))
    i = find(sup, k)
    freed += shadow.free_shadow(st, sup[i * STRIDE + 1], lv + 1)
    g = find(st.guest_upper, k)
    h = st.guest_upper[g * STRIDE + 2]
    if h < 0:
        h = back_frame(st, st.guest_upper[g * STRIDE + 1])
    sup[i * STRIDE + 1] = h
    sup[i * STRIDE + 2] = X.AGILE_SWITCH
    sup[i * STRIDE + 3] = X.AGILE_YOUNG
    slots[slot, X.SL_NSHADOW] -= freed
    C[K.SHADOW_PAGES_FREED] += freed


@njit(cache=True, _nrt=False)
def scan(st):
    """The VMM's periodic scan: nested parts not written since the last scan (and nested
    before it) move back to shadow when ``S_AGILE_MOVE_BACK``; flags and write counts start
    again."""
    S, C, sup, slots = st.scalars, st.counters, st.shadow_upper, st.spaces
    back = S[X.S_AGILE_MOVE_BACK] != 0  # (without it nothing is read: only counts restart)
    moved = False
    for s in range(slots.shape[0]):
        if slots[s, X.SL_ALIVE] != 1:
            continue
        slots[s, X.SL_AGILE_WRITES] = 0
        if back and slots[s, X.SL_AGILE_NESTED] != 0:
            C[K.AGILE_SCANNED] += 1
            f = slots[s, X.SL_AGILE_DIRTY]
            # one that started nested is shadowed once it has lived a whole interval (it is
            # not short-lived); one moved to nested by its writes once it stays clean
            if f == 0 or f == X.AGILE_NEW | X.AGILE_DIRTY or f == X.AGILE_NEW:
                slots[s, X.SL_AGILE_NESTED] = 0
                slots[s, X.SL_AGILE_DIRTY] = 0
                C[K.AGILE_TO_SHADOW] += 1
                moved = True
                if S[X.S_CUR] == s:
                    shadow.new_root(st, s)
            else:
                slots[s, X.SL_AGILE_DIRTY] = f & X.AGILE_NEW
    for i in range(sup.shape[0] // STRIDE):
        if sup[i * STRIDE] < 0:
            continue
        if sup[i * STRIDE + 2] != X.AGILE_SWITCH:
            sup[i * STRIDE + 3] = 0  # a shadowed page's write count starts again
            continue
        if not back:
            continue
        C[K.AGILE_SCANNED] += 1
        if sup[i * STRIDE + 3] == 0:
            lv = (sup[i * STRIDE] >> 45) & 7
            n = shadow.pages_per_shadow(S, lv)
            sup[i * STRIDE + 1] = alloc_hfn(st, n)
            sup[i * STRIDE + 2] = 0
            slots[sup[i * STRIDE] >> 48, X.SL_NSHADOW] += n
            C[K.SHADOW_PAGES] += n
            C[K.AGILE_TO_SHADOW] += 1
            moved = True
        else:
            sup[i * STRIDE + 3] = 0
    if moved:
        flush_psc(st)  # cached guest-table entries of the parts now shadowed


@njit(cache=True, _nrt=False)
def new_address_space(st, slot):
    """Agile state of a new address space (wholly nested when the policy starts so)."""
    S, slots = st.scalars, st.spaces
    nested = S[X.S_MODE] == X.MODE_AGILE and S[X.S_AGILE_START_NESTED] != 0
    slots[slot, X.SL_AGILE_NESTED] = 1 if nested else 0
    slots[slot, X.SL_AGILE_DIRTY] = X.AGILE_NEW | X.AGILE_YOUNG if nested else 0
    slots[slot, X.SL_AGILE_WRITES] = 0
