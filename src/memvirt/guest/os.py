"""The guest OS model: demand paging, copy-on-write, munmap/brk, fork/exec/exit, CR3 loads.

Every guest page-table write goes through ``vmm.agile.on_guest_pte_write`` so that,
under shadow paging (and for the shadowed part under agile paging), writes to
write-protected page-table pages exit; under nested paging and natively that call does
nothing.  Page-table pages are allocated on
demand and kept until the address space dies (munmap does not free them).
"""

from __future__ import annotations

from numba import njit

from .. import counters as K
from .. import state as X
from ..hw.tlb import flush_tlbs, invlpg_tlbs
from ..vmm import agile, shadow
from ..vmm.p2m import vm_exit
from .frames import alloc_gfn, put_frame
from .pagetable import STRIDE, TOMB, collect, find, make_key, put


@njit(cache=True, _nrt=False, inline="always")
def _shift(S, lv):
    return 12 + S[X.S_BITS] * lv


@njit(cache=True, _nrt=False)
def new_address_space(st, slot):
    S, C, slots = st.scalars, st.counters, st.spaces
    g, h = alloc_gfn(st)
    C[K.PT_PAGES] += 1
    slots[slot, X.SL_ALIVE] = 1
    slots[slot, X.SL_ROOT_GFN] = g
    slots[slot, X.SL_ROOT_HFN] = h
    slots[slot, X.SL_SROOT] = -1
    slots[slot, X.SL_BRK] = -1
    slots[slot, X.SL_NUP] = 0
    slots[slot, X.SL_NLEAF] = 0
    slots[slot, X.SL_NSHADOW] = 0
    slots[slot, X.SL_INSTR] = 0
    agile.new_address_space(st, slot)
    if shadow.traps(st, slot) and S[X.S_CUR] == slot:
        shadow.new_root(st, slot)


@njit(cache=True, _nrt=False)
def cr3_load(st, slot):
    """Context switch to address space ``slot``."""
    S, C, slots = st.scalars, st.counters, st.spaces
    C[K.CR3_LOADS] += 1
    S[X.S_CUR] = slot
    if S[X.S_PCID] == 0:
        flush_tlbs(st)
    if shadow.traps(st, slot):  # (agile: a wholly nested address space needs no shadow)
        vm_exit(st, K.EXIT_CR3)
        shadow.oos_resync_all(st)
        if slots[slot, X.SL_SROOT] < 0:
            shadow.new_root(st, slot)


@njit(cache=True, _nrt=False)
def guest_flush(st):
    """The guest flushes its whole TLB (a CR3 reload): exits under shadow paging."""
    flush_tlbs(st)
    if shadow.traps(st, st.scalars[X.S_CUR]):
        vm_exit(st, K.EXIT_CR3)
        shadow.oos_resync_all(st)


@njit(cache=True, _nrt=False)
def guest_invlpg(st, slot, vpn):
    C = st.counters
    C[K.INVLPGS] += 1
    invlpg_tlbs(st, slot, vpn)
    if shadow.traps(st, slot):
        vm_exit(st, K.EXIT_INVLPG)
        shadow.oos_resync_page(st, slot, vpn << 12)


FIXMAP_VPN = 0xFFBFE  # the kmap_atomic fixmap slot's page (near the top of a 32-bit kernel)


@njit(cache=True, _nrt=False)
def kmap_page_tables(st, slot, n):
    """The guest kernel works on ``n`` page-table pages that live in high memory (32-bit
    Linux, CONFIG_HIGHPTE): each is mapped with kmap_atomic (a write to the fixmap PTE) and
    unmapped with kunmap_atomic (an INVLPG of the fixmap address, which also drops the
    paging-structure caches).  Under shadow paging the fixmap PTE is in a shadowed kernel
    page table: the write traps (with out-of-sync shadows it unsyncs the page, which the
    INVLPG resyncs; without, it is emulated) and the INVLPG exits.  Nothing happens for a guest without highmem page tables."""
    S, C = st.scalars, st.counters
    if S[X.S_HIGHPTE] == 0 or n <= 0:
        return
    C[K.HIGHPTE_MAPS] += n
    C[K.PTE_UPDATES] += n
    C[K.INVLPGS] += n
    for _ in range(n):
        invlpg_tlbs(st, X.VMM_SPACE - 1, FIXMAP_VPN)  # kernel mapping: not a process's
        if shadow.traps(st, slot):
            # out-of-sync shadows: the write unsyncs the fixmap's page table (the INVLPG
            # resyncs it again); without them it is emulated
            vm_exit(st, K.EXIT_UNSYNC if S[X.S_OOS] != 0 else K.EXIT_PTE_WRITE)
            vm_exit(st, K.EXIT_INVLPG)
            if S[X.S_OOS] != 0:
                C[K.OOS_RESYNCS] += 1


@njit(cache=True, _nrt=False)
def page_fault(st, slot, va, leaf_i):
    """The guest's page-fault handler.  ``leaf_i`` >= 0: write to a COW page, else demand."""
    S, C, gup, gleaf, slots, refcnt = st.scalars, st.counters, st.guest_upper, st.guest_leaf, st.spaces, st.frame_refcount
    key0 = make_key(slot, 0, va >> 12)
    kmap_page_tables(st, slot, 1)  # pte_offset_map of the faulting address's page table
    if leaf_i >= 0:
        C[K.GPF_COW] += 1
        old = gleaf[leaf_i * STRIDE + 1] >> 2
        if refcnt[old] > 1:
            put_frame(st, old)
            g, h = alloc_gfn(st)
        else:  # the last sharer keeps the frame and just gets write access back
            g, h = old, gleaf[leaf_i * STRIDE + 2]
        put(gleaf, S[X.S_GLEAF_USED:X.S_GLEAF_USED + 1], key0, (g << 2) | 1, h)
        agile.on_guest_pte_write(st, slot, 0, va)
        guest_invlpg(st, slot, va >> 12)  # ptep_clear_flush
        return
    C[K.GPF_DEMAND] += 1
    used_up = S[X.S_GUP_USED:X.S_GUP_USED + 1]
    for lv in range(S[X.S_LEVELS] - 1, 0, -1):
        k = make_key(slot, lv, va >> _shift(S, lv))
        if find(gup, k) < 0:
            g, h = alloc_gfn(st)
            C[K.PT_PAGES] += 1
            put(gup, used_up, k, g, h)
            slots[slot, X.SL_NUP] += 1
            agile.on_guest_pte_write(st, slot, lv, va)
    g, h = alloc_gfn(st)
    put(gleaf, S[X.S_GLEAF_USED:X.S_GLEAF_USED + 1], key0, (g << 2) | 1, h)
    slots[slot, X.SL_NLEAF] += 1
    agile.on_guest_pte_write(st, slot, 0, va)


@njit(cache=True, _nrt=False, inline="always")
def _page_tables(scr, nu):
    """Leaf page-table pages among the ``nu`` upper entries ``collect`` found (level 1 ones
    point to page tables)."""
    n = 0
    for i in range(nu):
        if scr[1, i] == 1:
            n += 1
    return n


@njit(cache=True, _nrt=False)
def _unmap_pages(st, slot, lo, hi):
    """Clear present leaf entries of pages [lo, hi); returns pages cleared."""
    S, C, gup, gleaf, slots = st.scalars, st.counters, st.guest_upper, st.guest_leaf, st.spaces
    scr = st.scratch
    nl, nu = collect(gup, gleaf, slot, S[X.S_LEVELS], S[X.S_BITS], lo, hi, scr)
    kmap_page_tables(st, slot, _page_tables(scr, nu))  # zap_pte_range maps each one
    for t in range(nl):
        c = scr[0, t]
        j = find(gleaf, make_key(slot, 0, c))
        put_frame(st, gleaf[j * STRIDE + 1] >> 2)
        gleaf[j * STRIDE] = TOMB
        slots[slot, X.SL_NLEAF] -= 1
        C[K.PTE_UPDATES] += 1
        agile.on_guest_pte_write(st, slot, 0, c << 12)
    return nl


@njit(cache=True, _nrt=False)
def munmap(st, slot, start, length):
    """Unmap [start, start+length): clear PTEs, then INVLPG each page or flush everything."""
    S = st.scalars
    lo = start >> 12
    hi = (start + length + 4095) >> 12
    if hi > S[X.S_VA_PAGES]:
        hi = S[X.S_VA_PAGES]
    if hi <= lo:
        return
    _unmap_pages(st, slot, lo, hi)
    if hi - lo <= S[X.S_CEIL]:
        for vpn in range(lo, hi):
            guest_invlpg(st, slot, vpn)
    else:
        guest_flush(st)


@njit(cache=True, _nrt=False)
def brk(st, slot, new_brk):
    slots = st.spaces
    old = slots[slot, X.SL_BRK]
    if new_brk == 0:  # brk(0) queries the break
        return
    if old >= 0 and new_brk < old:
        lo = (new_brk + 4095) & ~4095
        if old > lo:
            munmap(st, slot, lo, old - lo)
    slots[slot, X.SL_BRK] = new_brk


@njit(cache=True, _nrt=False)
def fork(st, parent, child):
    """Copy the parent's page table into a new address space, both sides copy-on-write."""
    S, C, gup, gleaf, slots, refcnt = st.scalars, st.counters, st.guest_upper, st.guest_leaf, st.spaces, st.frame_refcount
    C[K.FORKS] += 1
    C[K.PROCESS_OPS] += 1
    new_address_space(st, child)
    slots[child, X.SL_BRK] = slots[parent, X.SL_BRK]
    scr = st.scratch
    nl, nu = collect(gup, gleaf, parent, S[X.S_LEVELS], S[X.S_BITS], 0, S[X.S_VA_PAGES], scr)
    kmap_page_tables(st, parent, 2 * _page_tables(scr, nu))  # copy_pte_range: src and dst
    used_up = S[X.S_GUP_USED:X.S_GUP_USED + 1]
    used_leaf = S[X.S_GLEAF_USED:X.S_GLEAF_USED + 1]
    for i in range(nu):
        g, h = alloc_gfn(st)
        C[K.PT_PAGES] += 1
        put(gup, used_up, make_key(child, scr[1, i], scr[2, i]), g, h)
        slots[child, X.SL_NUP] += 1
        C[K.PTE_UPDATES] += 1
    for t in range(nl):
        c = scr[0, t]
        j = find(gleaf, make_key(parent, 0, c))
        v = gleaf[j * STRIDE + 1]
        h = gleaf[j * STRIDE + 2]
        g = v >> 2
        cow = (g << 2) | 2
        if v & 1:
            gleaf[j * STRIDE + 1] = cow
            C[K.PTE_UPDATES] += 1
            agile.on_guest_pte_write(st, parent, 0, c << 12)
        put(gleaf, used_leaf, make_key(child, 0, c), cow, h)
        slots[child, X.SL_NLEAF] += 1
        refcnt[g] += 1
        C[K.PTE_UPDATES] += 1
    guest_flush(st)


@njit(cache=True, _nrt=False)
def teardown(st, slot):
    """Free an address space: its mappings, its page-table pages and its shadow."""
    S, C, gup, gleaf, slots = st.scalars, st.counters, st.guest_upper, st.guest_leaf, st.spaces
    if shadow.traps(st, slot) and slots[slot, X.SL_SROOT] >= 0:
        vm_exit(st, K.EXIT_PTE_WRITE)  # the first teardown write unshadows it all
    shadow.destroy(st, slot)
    scr = st.scratch
    nl, nu = collect(gup, gleaf, slot, S[X.S_LEVELS], S[X.S_BITS], 0, S[X.S_VA_PAGES], scr)
    kmap_page_tables(st, slot, _page_tables(scr, nu))  # exit_mmap zaps each page table
    for t in range(nl):
        j = find(gleaf, make_key(slot, 0, scr[0, t]))
        put_frame(st, gleaf[j * STRIDE + 1] >> 2)
        gleaf[j * STRIDE] = TOMB
    for i in range(nu):
        j = find(gup, make_key(slot, scr[1, i], scr[2, i]))
        put_frame(st, gup[j * STRIDE + 1])
        gup[j * STRIDE] = TOMB
    put_frame(st, slots[slot, X.SL_ROOT_GFN])
    C[K.PTE_UPDATES] += nl
    slots[slot, X.SL_NUP] = 0
    slots[slot, X.SL_NLEAF] = 0
    flush_tlbs(st)  # the address-space id may be reused


@njit(cache=True, _nrt=False)
def exec_(st, slot):
    C = st.counters
    C[K.EXECS] += 1
    C[K.PROCESS_OPS] += 1
    teardown(st, slot)
    new_address_space(st, slot)


@njit(cache=True, _nrt=False)
def exit_(st, slot):
    S, C, slots = st.scalars, st.counters, st.spaces
    C[K.EXITS] += 1
    C[K.PROCESS_OPS] += 1
    teardown(st, slot)
    slots[slot, X.SL_ALIVE] = 0
    if S[X.S_CUR] == slot:
        S[X.S_CUR] = -1
