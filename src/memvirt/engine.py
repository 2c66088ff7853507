"""The driver: validates trace chunks, runs them through the compiled kernels, keeps samples.

Per chunk: ``prepare`` maps process ids to address-space slots and rejects bad
records with a clear error (no bad value ever reaches compiled code); ``run_records``
then processes records until the chunk ends, a sampling period ends, or a table
needs to grow (the driver grows it and resumes).  At each period end the driver
stores a sample (the counter deltas) and, in selective mode, asks the policy for
the next period's mode.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

from . import counters as K
from . import state as X
from .budget import SimulatorMemoryError, fmt_bytes
from .config import Config
from .errors import TraceError
from .guest import os as guest
from .guest import pagetable as pt
from .hw import cache as hwc
from .hw.memory import LEVEL_L1, lookup_below_l1
from .hw.prefetch import prefetch
from .hw.tlb import flush_nested, flush_tlbs
from .trace.records import Kind, Trace
from .vmm import shadow
from .vmm.agile import scan as agile_scan
from .vmm.modes import access
from .vmm.p2m import populate_all

KERNEL_FRAMES = 4096  # the guest kernel's own memory (16 MiB): never handed to processes
# host.page_size -> the EPT level that maps it (S_HOST_LEAF): a PTE (4 KiB), a PDE with bit 7
# set (2 MiB) or a PDPTE with bit 7 set (1 GiB; Intel SDM vol. 3, 28.2.2)
HOST_LEAF = {4096: 0, 2097152: 1, 1073741824: 2}
# guest.frame_order = "buddy": the frames come in aligned runs of this many.  Linux hands
# out order-0 pages through per-CPU lists that rmqueue_bulk() refills `batch` pages at a time
# from the buddy allocator, each refill splitting a higher-order block into consecutive
# frames (mm/page_alloc.c, Linux 2.6.18, the study's guest kernel: zone_batchsize() takes
# present_pages / 1024, caps it at 512 KiB of pages, divides by 4 and clamps it to
# 2^n - 1: batch = 31 for every zone of 512 MiB or more).  32 is the aligned power of two
# nearest to that batch.
BUDDY_RUN = 32
_FRAME_SEED = 0x6D656D76  # the fixed pseudo-random order of "scattered" (and of buddy's runs)


def free_frames(frames: int, order: str) -> np.ndarray:
    """The guest's free-frame stack at the start (the top, handed out first, is the end):
    every frame above the kernel's, in order (``sequential``), in a fixed pseudo-random
    order (``scattered``), or in aligned runs of ``BUDDY_RUN`` consecutive frames, each run
    handed out lowest frame first and the runs in a fixed pseudo-random order (``buddy``).
    A new writable array each call (the machine pushes freed frames onto it)."""
    return _initial_free_frames(frames, order).copy()


@functools.lru_cache(maxsize=4)
def _initial_free_frames(frames: int, order: str) -> np.ndarray:
    # the shuffle of a few million frames costs more than a run of a short trace: once per
    # (size, order) in a process (sweeps and benchmarks run many machines)
    reserved = min(KERNEL_FRAMES, frames // 4)
    if order == "buddy":
        lo = min(frames, -(-reserved // BUDDY_RUN) * BUDDY_RUN)  # first aligned frame above it
        nrun = max(0, (frames - lo) // BUDDY_RUN)
        hi = lo + nrun * BUDDY_RUN
        idx = np.arange(nrun, dtype=np.int64)
        np.random.default_rng(_FRAME_SEED).shuffle(idx)
        runs = (lo + idx[:, None] * BUDDY_RUN + np.arange(BUDDY_RUN, dtype=np.int64)).ravel()
        # handed out in this order: the runs, then the unaligned frames at either end
        out = np.concatenate([runs, np.arange(reserved, lo, dtype=np.int64),
                              np.arange(hi, frames, dtype=np.int64)])
        free = out[::-1].copy()  # the first run's lowest frame on top
    else:
        free = np.arange(frames - 1, reserved - 1, -1, dtype=np.int64)  # lowest on top
        if order == "scattered":
            np.random.default_rng(_FRAME_SEED).shuffle(free)
    free.setflags(write=False)
    return free

# ----------------------------------------------------------------------------- kernel

PREFETCH_AHEAD = 8  # records between a prefetch and the walk that reads the entry
LINES_AHEAD = 4  # records between a prefetch of L3 sets and the lookups in them


@njit(cache=True, _nrt=False, inline="always")
def _l3_set(ctag, cstamp, cgeom, line):
    """Prefetch the L3 set of ``line``: its tags and stamps (first and last way)."""
    ways = cgeom[hwc.L3C, 2]
    b = cgeom[hwc.L3C, 0] + (line & cgeom[hwc.L3C, 3]) * ways
    prefetch(ctag, b)
    prefetch(ctag, b + ways - 1)
    prefetch(cstamp, b)
    prefetch(cstamp, b + ways - 1)


@njit(cache=True, _nrt=False, inline="always")
def _prefetch_ept_set(st, gfn):
    """Prefetch the L3 set of the EPT entry that maps guest frame ``gfn`` (the last
    reference of its nested walk), if its table is where it is first probed."""
    S, eup = st.scalars, st.ept_upper
    lv = S[X.S_HOST_LEAF] + 1
    k = pt.make_key(0, lv, gfn >> (9 * lv))
    i = pt.hash_key(k) & ((eup.shape[0] // pt.STRIDE) - 1)
    if eup[i * pt.STRIDE] == k:
        ent = ((gfn >> (9 * (lv - 1))) & 511) * 8
        _l3_set(st.cache_tag, st.cache_stamp, st.cache_geom,
                ((eup[i * pt.STRIDE + 1] << 12) + ent) >> 6)


@njit(cache=True, _nrt=False, inline="always")
def _prefetch_l3_sets(st, s, va, data):
    """A later record's L3 lookups are random reads of a large array: prefetch the sets of
    the leaf entry its walk would read, (``data``) of its data line and, under nested
    paging, of the EPT entries that map both frames, when the entries that give them are
    where they are first probed (reads only: no state changes; a wrong guess costs a
    useless prefetch)."""
    S, ctag, cstamp, cgeom = st.scalars, st.cache_tag, st.cache_stamp, st.cache_geom
    mode = S[X.S_MODE]
    shadowed = mode == X.MODE_SHADOW
    if shadowed and S[X.S_PAE_SHADOW] != 0:
        return  # its own walk geometry: not worth it
    nested = mode == X.MODE_NESTED
    leaf = st.shadow_leaf if shadowed else st.guest_leaf
    up = st.shadow_upper if shadowed else st.guest_upper
    if data:
        k = pt.make_key(s, 0, va >> 12)
        i = pt.hash_key(k) & ((leaf.shape[0] // pt.STRIDE) - 1)
        if leaf[i * pt.STRIDE] == k:
            v = leaf[i * pt.STRIDE + 1]
            frame = v >> 1 if shadowed else (leaf[i * pt.STRIDE + 2] if nested else v >> 2)
            if frame >= 0:
                _l3_set(ctag, cstamp, cgeom, (frame << 6) | ((va >> 6) & 63))
            if nested:
                _prefetch_ept_set(st, v >> 2)
    bits = S[X.S_BITS]
    k = pt.make_key(s, 1, va >> (12 + bits))
    i = pt.hash_key(k) & ((up.shape[0] // pt.STRIDE) - 1)
    if up[i * pt.STRIDE] == k:
        table = up[i * pt.STRIDE + (2 if nested else 1)]
        if table >= 0:
            ent = ((va >> 12) & ((1 << bits) - 1)) * S[X.S_ENTRY_BYTES]
            _l3_set(ctag, cstamp, cgeom, ((table << 12) + ent) >> 6)
        if nested:
            _prefetch_ept_set(st, up[i * pt.STRIDE + 1])


@njit(cache=True, _nrt=False, inline="always")
def _flush_fast(C, cclock, clk, fl, fs, ff, dl1):
    """Add the fast path's local counts to the counters (loads, stores, fetches: all TLB
    hits; ``dl1`` data accesses that hit the L1D)."""
    C[K.ACCESSES] += fl + fs + ff
    C[K.LOADS] += fl
    C[K.STORES] += fs
    C[K.IFETCH] += ff
    C[K.DTLB_HIT] += fl + fs
    C[K.ITLB_HIT] += ff
    C[K.DATA_L1] += dl1
    cclock[0] = clk


@njit(cache=True, _nrt=False, inline="always")
def _folded_hits(C, k, n):
    """Count ``n`` folded accesses of a collapsed record as L1 TLB hits (a Lackey M is a
    load and a store, both hits)."""
    if k == 0:
        C[K.IFETCH] += n
        C[K.ITLB_HIT] += n
        C[K.ACCESSES] += n
    elif k == 3:
        C[K.LOADS] += n
        C[K.STORES] += n
        C[K.DTLB_HIT] += 2 * n
        C[K.ACCESSES] += 2 * n
    else:
        C[K.LOADS if k == 1 else K.STORES] += n
        C[K.DTLB_HIT] += n
        C[K.ACCESSES] += n


@njit(cache=True, _nrt=False)
def data_lines(C, ctag, cstamp, cval, cgeom, clast, cclock, frame, va, size, n, bitmap):
    """``n`` data accesses (a record and its folded repeats) of ``size`` bytes at ``va``, on
    physical frame ``frame``: the lines of the first access, then the other lines of the
    page in ``bitmap`` (a collapsed record's: every line its accesses touched; 0: only the
    first access's), are looked up in the caches, in that order (each 64-byte line of a
    page is in a set of its own at every level of a real-sized cache, so their order does
    not matter there); the remaining accesses touch lines already there: L1D hits.

    It takes the cache arrays rather than the whole state: a call passes every array's
    fields, and the state's take several times longer to pass than this does."""
    off = va & 4095
    end = off + (size - 1 if size > 0 else 0)
    if end > 4095:
        end = 4095  # the rest is on the next page (its own step)
    first = off >> 6
    last = end >> 6
    base = frame << 6
    own = (~np.uint64(0) >> np.uint64(63 - (last - first))) << np.uint64(first)
    more = np.uint64(bitmap) & ~own  # the bitmap's lines outside the first access's
    extra = 0
    ln = first
    while True:  # one loop and one lookup site for both (so the lookup inlines once)
        if ln <= last:
            cur = ln
            ln += 1
        elif more != 0:
            cur = np.int64(trailing_zeros(more))  # the lowest line left
            more &= more - np.uint64(1)
            extra += 1
        else:
            break
        line = base + cur
        if cgeom[hwc.L1D, 1] > 0 and hwc.touch(ctag, cstamp, cval, cgeom, clast, cclock,
                                               hwc.L1D, line):
            C[K.DATA_L1 + LEVEL_L1] += 1
        else:
            C[K.DATA_L1 + lookup_below_l1(ctag, cstamp, cval, cgeom, clast, cclock, line)] += 1
    if n - 1 - extra > 0:
        C[K.DATA_L1] += n - 1 - extra  # the same lines again: L1D hits


@njit(cache=True, _nrt=False)
def run_records(st, kind, addr, size, icount, repeat, lines, slot, arg, pos, end, boundary,
                sync):
    """Process records [pos, end).  Returns (status, next record index).

    A sampling period ends just before the first *sync point* at or after ``boundary``
    instructions: with ``sync`` = 1 before any record; with ``sync`` = G > 1 only before an
    instruction fetch whose index in its process image is a multiple of G (where a
    collapsed capture always starts a record, so periods fall at the same place in the
    collapsed and the full trace).  A record of ``repeat`` n stands for n accesses to the
    same page: the first is translated, the others are L1 TLB hits (when the L1 TLB is
    disabled every one is translated); ``lines`` is the bitmap of the page's lines they
    touched (0: the first access's only), which the data caches see.
    """
    S, C, slots, lim = st.scalars, st.counters, st.spaces, st.limits
    ctag, cstamp, cval = st.cache_tag, st.cache_stamp, st.cache_val
    cgeom, clast, cclock = st.cache_geom, st.cache_last, st.cache_clock
    levels = S[X.S_LEVELS]
    data_on = S[X.S_DATA_CACHES] != 0 and cgeom[hwc.L1D, 1] > 0
    # The fast path (a single-page access that hits the L1 TLB and, for data, the L1D)
    # keeps its counts, the instruction count and the LRU clock in locals; they are written
    # back before anything else runs and on return.
    instr = C[K.INSTR]
    clk = cclock[0]
    fl = 0
    fs = 0
    ff = 0
    dl1 = 0
    for r in range(pos, end):
        ru = np.uint64(r)  # indices known to be in range, unsigned: no wraparound code
        k = kind[ru]
        s = slot[ru]
        if instr >= boundary and (sync == 1 or (
                k == 0 and slots[s, X.SL_ALIVE] == 1 and slots[s, X.SL_INSTR] > 0
                and slots[s, X.SL_INSTR] % sync == 0)):
            C[K.INSTR] = instr
            _flush_fast(C, cclock, clk, fl, fs, ff, dl1)
            return X.ST_PERIOD, r
        if k <= 2 and s == S[X.S_CUR]:
            va = np.int64(addr[ru])
            sz = np.int64(size[ru])
            # one page, and for priced data one line (else the slow path)
            if (va & 4095) + sz <= 4096 and (k == 0 or not data_on or (
                    (va & 63) + sz <= 64 and lines[ru] == 0)):
                cid = hwc.ITLB if k == 0 else hwc.DTLB
                key = (s << 45) | (va >> 12)
                hit = -1
                if clast[cid, 0] == key:  # already the most recently used: LRU unchanged
                    hit = clast[cid, 1]
                else:
                    hit = hwc.find_way(ctag, cgeom[cid, 0] + (key & cgeom[cid, 3]) * cgeom[cid, 2],
                                       cgeom[cid, 2], key)
                    if hit >= 0:
                        clk += 1
                        cstamp[np.uint64(hit)] = clk
                        clast[cid, 0] = key
                        clast[cid, 1] = hit
                if hit >= 0 and (k != 2 or (cval[np.uint64(hit)] & 1) == 1):
                    if k != 0 and data_on:
                        line = ((cval[np.uint64(hit)] >> 1) << 6) | ((va >> 6) & 63)
                        if clast[hwc.L1D, 0] != line:
                            lw = cgeom[hwc.L1D, 2]
                            lb = cgeom[hwc.L1D, 0] + (line & cgeom[hwc.L1D, 3]) * lw
                            li = hwc.find_way(ctag, lb, lw, line)
                            if li >= 0:
                                clk += 1
                                cstamp[np.uint64(li)] = clk
                                clast[hwc.L1D, 0] = line
                                clast[hwc.L1D, 1] = li
                            else:
                                # below the L1D (lookup_line's L1D miss, its set already
                                # found): fill it, then the L2 and the L3; stay on the fast path
                                cclock[0] = clk
                                hwc.fill_line(ctag, cstamp, clast, cclock, hwc.L1D, lb, lw, line)
                                C[K.DATA_L1 + lookup_below_l1(ctag, cstamp, cval, cgeom, clast,
                                                              cclock, line)] += 1
                                clk = cclock[0]
                                dl1 -= 1  # that access was counted at its level, not as an L1 hit
                    n = np.int64(repeat[ru])
                    if k == 0:
                        ff += n
                    else:
                        if data_on:
                            dl1 += n
                        if k == 1:
                            fl += n
                        else:
                            fs += n
                    instr += icount[ru]
                    slots[np.uint64(s), X.SL_INSTR] += icount[ru]
                    continue
        # Slow path: bring the shared state up to date first.
        if r + PREFETCH_AHEAD < end and kind[r + PREFETCH_AHEAD] <= 3:
            # the leaf entry a later record's walk will read (same slot as pt.find's probe)
            q = r + PREFETCH_AHEAD
            tab = st.shadow_leaf if S[X.S_MODE] == X.MODE_SHADOW else st.guest_leaf
            pk = pt.make_key(slot[q], 0, np.int64(addr[q]) >> 12)
            prefetch(tab, (pt.hash_key(pk) & ((tab.shape[0] // pt.STRIDE) - 1)) * pt.STRIDE)
        if r + LINES_AHEAD < end and kind[r + LINES_AHEAD] <= 3 and cgeom[hwc.L3C, 1] > 0:
            q = r + LINES_AHEAD
            _prefetch_l3_sets(st, slot[q], np.int64(addr[q]), kind[q] != 0 and data_on)
        C[K.INSTR] = instr
        _flush_fast(C, cclock, clk, fl, fs, ff, dl1)
        fl = 0
        fs = 0
        ff = 0
        dl1 = 0
        # Room for what this record may add (a fork copies the parent's whole table).
        need = 4 * levels + 16 + 4 * S[X.S_SH_PREFETCH]  # a record fills at most a few paths
        if k == 11:
            need += slots[s, X.SL_NUP] + slots[s, X.SL_NLEAF]
        elif k == 12 or k == 13 or S[X.S_MODE] == X.MODE_AGILE:
            need += slots[s, X.SL_NSHADOW]  # (agile: a subtree may move to nested)
        if (S[X.S_GUP_USED] + need > lim[X.LIM_GUP] or S[X.S_GLEAF_USED] + need > lim[X.LIM_GLEAF]
                or S[X.S_SUP_USED] + need > lim[X.LIM_SUP]
                or S[X.S_SLEAF_USED] + need > lim[X.LIM_SLEAF]
                or S[X.S_EUP_USED] + need > lim[X.LIM_EUP]
                or S[X.S_HFREE_TOP] + need > lim[X.LIM_HFREE]
                or S[X.S_GLEAF_USED] + S[X.S_GUP_USED] + need > lim[X.LIM_SCR]
                or S[X.S_SLEAF_USED] + S[X.S_SUP_USED] + need > lim[X.LIM_SCR]):
            S[X.S_NEED] = need
            return X.ST_GROW, r
        if S[X.S_GFREE_TOP] < need:
            S[X.S_ERROR] = X.ERR_OOM
            return X.ST_ERROR, r
        if slots[s, X.SL_ALIVE] == 0:  # a process already running when the trace starts
            guest.new_address_space(st, s)
        if s != S[X.S_CUR]:
            guest.cr3_load(st, s)
        if k <= 3:
            va = np.int64(addr[r])
            sz = np.int64(size[r])
            last = va + (sz - 1 if sz > 0 else 0)
            npages = (last >> 12) - (va >> 12) + 1
            n = np.int64(repeat[r])
            # The accesses to translate one by one: the first (a page-crossing access
            # translates each page, a Lackey M is a load then a store), or every one of a
            # collapsed record when its L1 TLB is disabled (no folded hits to count).
            times = n if cgeom[hwc.ITLB if k == 0 else hwc.DTLB, 1] == 0 else 1
            for t in range(times):
                if k == 0:
                    C[K.IFETCH] += 1
                elif k == 1:
                    C[K.LOADS] += 1
                elif k == 2:
                    C[K.STORES] += 1
                else:
                    C[K.LOADS] += 1
                    C[K.STORES] += 1
                # One call site for access() so that it inlines once.
                for step in range(npages * (2 if k == 3 else 1)):
                    p = step >> 1 if k == 3 else step
                    a = va if p == 0 else ((va >> 12) + p) << 12
                    store = 1 if (k == 2 or (k == 3 and (step & 1) == 1)) else 0
                    v = access(st, s, a, store, k == 0)
                    if v < 0:
                        S[X.S_ERROR] = X.ERR_LOOP
                        return X.ST_ERROR, r
                    if k != 0 and data_on and t == 0 and (k != 3 or (step & 1) == 0):
                        # this page's bytes of the access and of its folded repeats, all
                        # priced at once (a Lackey M's store hits the line its load
                        # brought in)
                        data_lines(C, ctag, cstamp, cval, cgeom, clast, cclock, v >> 1, a,
                                   sz - (a - va), n * (2 if k == 3 else 1),
                                   lines[r] if step == 0 else np.uint64(0))
            if n > times:
                _folded_hits(C, k, n - times)
        elif k == 8:
            C[K.SYSCALLS] += 1
            C[K.MMAPS] += 1
        elif k == 9:
            C[K.SYSCALLS] += 1
            C[K.MUNMAPS] += 1
            guest.munmap(st, s, np.int64(addr[r]), np.int64(size[r]))
        elif k == 10:
            C[K.SYSCALLS] += 1
            C[K.BRKS] += 1
            guest.brk(st, s, np.int64(addr[r]))
        elif k == 11:
            guest.fork(st, s, arg[r])
        elif k == 12:
            guest.exec_(st, s)
        elif k == 13:
            guest.exit_(st, s)
        C[K.INSTR] += icount[r]
        slots[s, X.SL_INSTR] += icount[r]
        instr = C[K.INSTR]
        clk = cclock[0]
    C[K.INSTR] = instr
    _flush_fast(C, cclock, clk, fl, fs, ff, dl1)
    return X.ST_DONE, end


@njit(cache=True, _nrt=False)
def switch_mode(st, new_mode):
    """Switch the whole VM between shadow and nested paging (the guest state is untouched).

    nested -> shadow: the EPT/p2m is kept, every address space starts with an empty
    shadow (filled on demand by hidden faults); shadow -> nested: every shadow is
    destroyed and the EPT root loaded.  Both flush the TLBs (VPID/EP4TA change).
    """
    S, C, slots = st.scalars, st.counters, st.spaces
    old = S[X.S_MODE]
    if old == new_mode:
        return
    for s in range(slots.shape[0]):
        if slots[s, X.SL_SROOT] >= 0:
            shadow.destroy(st, s)
    S[X.S_OOS_N] = 0
    S[X.S_MODE] = new_mode
    flush_tlbs(st)
    flush_nested(st)
    C[K.MODE_SWITCHES] += 1
    cur = S[X.S_CUR]
    if new_mode == X.MODE_SHADOW and cur >= 0:
        shadow.new_root(st, cur)


@njit(cache=True)
def _prepare(kind, addr, size, repeat, lines, pid_ids, child_ids, valid_kind, va_limit, alive,
             slot_of, free_slots, nfree, slot, arg):
    """Check every record and assign address-space slots, in one pass.

    Returns (error code, record index, nfree); error 0 means the chunk is good.
    alive[p]: 0 never seen, 1 alive, 2 exited.  pid_ids/child_ids index alive/slot_of and
    were bounded by the caller; kind indexes the 256-entry valid_kind table.
    """
    for r in range(kind.shape[0]):
        k = kind[r]
        if not valid_kind[k]:
            return 4, r, nfree
        if lines[r] != 0 and (k == 0 or k > 3):
            return 10, r, nfree  # line bitmaps describe data records only
        if k <= 3 or k == 8 or k == 9:
            a = addr[r]
            sz = size[r]
            if k <= 3 and sz > np.uint64(1048576):
                return 6, r, nfree
            last = a
            if sz > np.uint64(0):
                last = a + (sz - np.uint64(1))  # uint64 throughout: no float promotion
            if last < a or last >= va_limit:
                return 5, r, nfree
            if k <= 3:
                n = repeat[r]
                if n == 0:
                    return 7, r, nfree
                if n > 1 and (last >> np.uint64(12)) != (a >> np.uint64(12)):
                    return 8, r, nfree  # folded accesses must stay on one page
            elif repeat[r] != 1:
                return 9, r, nfree
        elif repeat[r] != 1:
            return 9, r, nfree
        if k == 10 and addr[r] >= va_limit:
            return 5, r, nfree
        p = pid_ids[r]
        if alive[p] == 2:
            return 1, r, nfree  # record of a process that has exited
        if alive[p] == 0:
            if nfree == 0:
                return 2, r, nfree
            nfree -= 1
            slot_of[p] = free_slots[nfree]
            alive[p] = 1
        slot[r] = slot_of[p]
        arg[r] = 0
        if k == 11:
            c = child_ids[r]
            if alive[c] == 1:
                return 3, r, nfree  # fork of a pid that is alive
            if nfree == 0:
                return 2, r, nfree
            nfree -= 1
            slot_of[c] = free_slots[nfree]
            alive[c] = 1
            arg[r] = slot_of[c]
        elif k == 13:
            alive[p] = 2
            free_slots[nfree] = slot_of[p]
            nfree += 1
    return 0, -1, nfree


# ----------------------------------------------------------------------------- driver

_VALID_KIND = np.zeros(256, bool)
_VALID_KIND[[int(k) for k in Kind]] = True


def _kind_name(k: int) -> str:
    return Kind(k).name if k in Kind._value2member_map_ else str(k)


class RecordError(TraceError):
    """A record the engine rejects: ``record`` is its global index (0-based, over all chunks,
    as the source yielded them) and ``reason`` what is wrong.  ``api.simulate`` adds where
    the record is in its file (the source's ``locate``)."""

    def __init__(self, record: int, reason: str):
        super().__init__(f"record {record}: {reason}")
        self.record = int(record)
        self.reason = reason


class Machine:
    """All state of one simulated machine (guest, VMM, hardware) between kernel calls."""

    def __init__(self, config: Config, mode: int, agile_settings: dict | None = None):
        g, h, hw = config.guest, config.host, config.hw
        self.config = config
        self.va_bits = g.va_bits
        S = np.zeros(X.NSCALARS, np.int64)
        S[X.S_MODE] = mode
        S[X.S_LEVELS] = g.levels
        S[X.S_BITS] = 10 if g.levels == 2 else 9
        S[X.S_EPT_LEVELS] = h.ept_levels
        S[X.S_HOST_LEAF] = HOST_LEAF[h.page_size]
        S[X.S_CUR] = -1
        S[X.S_PCID] = int(hw.pcid)
        S[X.S_VPID] = int(hw.vpid)
        S[X.S_OOS] = int(config.vmm.out_of_sync)
        S[X.S_OOS_MAX] = config.vmm.oos_pages
        S[X.S_SH_PREFETCH] = config.vmm.shadow_prefetch
        S[X.S_CEIL] = g.munmap_flush_ceiling
        S[X.S_VA_PAGES] = 1 << (self.va_bits - 12)
        S[X.S_EPT_ROOT] = 0
        S[X.S_WALK_L1D] = int(hw.walks_in_l1d)
        S[X.S_DATA_CACHES] = int(hw.data_caches)
        S[X.S_ENTRY_BYTES] = 4 if g.levels == 2 else 8  # 32-bit non-PAE entries are 4 bytes
        S[X.S_HIGHPTE] = int(g.uses_highpte)
        pae = config.vmm.pae_shadows
        S[X.S_PAE_SHADOW] = int(g.levels == 2 and (pae is None or pae))
        S[X.S_VMM_CODE] = config.vmm.exit_code_pages
        S[X.S_VMM_DATA] = config.vmm.exit_data_pages
        S[X.S_VMM_LINES] = config.vmm.exit_lines
        frames = g.frames
        S[X.S_GUEST_FRAMES] = frames
        # Host frames: 0 is the EPT root; the guest's backing starts at 1 (boot population:
        # hfn = 1 + gfn, in whole host pages); table pages and demand-backed frames come
        # after it.
        S[X.S_HOST_BASE] = 1
        S[X.S_AGILE_WRITES] = -1  # (set_agile: agile paging's settings)
        span = h.page_size // 4096
        S[X.S_NEXT_HFN] = 1 + (-(-frames // span) * span if h.populate == "boot" else 0)
        self.S = S
        if mode == X.MODE_AGILE:
            self.set_agile(agile_settings or {})
        self.C = np.zeros(K.NCOUNTERS, np.int64)
        geoms = [(0, 0)] * hwc.NSTRUCT
        geoms[hwc.ITLB] = (hw.itlb.sets, hw.itlb.ways)
        geoms[hwc.DTLB] = (hw.dtlb.sets, hw.dtlb.ways)
        geoms[hwc.STLB] = (hw.stlb.sets, hw.stlb.ways)
        for lv in range(1, 5):
            if lv < g.levels:
                geoms[hwc.PSC0 + lv] = (hw.psc.sets, hw.psc.ways)
            if lv < h.ept_levels:
                geoms[hwc.NPSC0 + lv] = (hw.nested_psc.sets, hw.nested_psc.ways)
        geoms[hwc.NTLB] = (hw.nested_tlb.sets, hw.nested_tlb.ways)
        geoms[hwc.L1D] = (hw.l1d.sets, hw.l1d.ways)
        geoms[hwc.L2C] = (hw.l2.sets, hw.l2.ways)
        geoms[hwc.L3C] = (hw.l3.sets, hw.l3.ways)
        self.caches = hwc.allocate(geoms)
        self.gup = pt.new_table(1024)
        self.gleaf = pt.new_table(1 << 14)
        self.sup = pt.new_table(1024)
        self.sleaf = pt.new_table(1 << 14)
        self.eup = pt.new_table(256)
        self.refcnt = np.zeros(frames, np.int32)
        self.p2m = np.full(self._p2m_len(frames), -1, np.int64)
        self.gfree = free_frames(frames, g.frame_order)
        S[X.S_GFREE_TOP] = len(self.gfree)
        self.hfree = np.zeros(1 << 12, np.int64)
        self.slots = np.zeros((config.guest.max_processes, X.NSLOTCOLS), np.int64)
        self.slots[:, X.SL_SROOT] = -1
        self.oos = np.zeros(config.vmm.oos_pages, np.int64)
        self.scr = np.zeros((5, 1 << 15), np.int64)
        self.lim = np.zeros(X.NLIMS, np.int64)
        self._update_limits()
        if h.populate == "boot":
            # every guest frame backed, and the EPT built, before the guest runs (the EPT
            # needs about frames / 512 table pages)
            self.eup = pt.new_table(4 * (frames // 512 + 64))
            self._update_limits()
            populate_all(self.state(), frames)
        # process bookkeeping for prepare(): pid -> dense id
        self.pid_ids: dict[int, int] = {}
        self.alive = np.zeros(64, np.int8)
        self.slot_of = np.zeros(64, np.int64)
        self.free_slots = np.arange(config.guest.max_processes - 1, -1, -1, dtype=np.int64)
        self.nfree = config.guest.max_processes
        self.records_done = 0
        self.boundary = np.int64(2**62)
        self.sync = 1  # sync-point interval of the trace (periods end only at sync points)
        self.position = 0  # records run when the last period ended
        self._zeros = np.zeros(0, np.uint64)  # never written: stands for "no bitmaps"
        self._slot_buf = np.empty(0, np.int64)
        self._arg_buf = np.empty(0, np.int64)
        self.pending_mode: int | None = None  # a mode switch decided at the last period end

    def set_agile(self, settings: dict) -> None:
        """Agile paging's policy settings (``memvirt.policy.agile``) for the kernels."""
        S = self.S
        if "write_threshold" in settings:
            S[X.S_AGILE_WRITES] = int(settings["write_threshold"])
        if "start_nested" in settings:
            S[X.S_AGILE_START_NESTED] = int(bool(settings["start_nested"]))
        if "move_back" in settings:
            S[X.S_AGILE_MOVE_BACK] = int(bool(settings["move_back"]))

    def agile_scan(self) -> None:
        """The VMM's periodic agile-paging scan (``vmm.agile.scan``)."""
        agile_scan(self.state())

    def _p2m_len(self, frames: int) -> int:
        return frames if self.S[X.S_HOST_LEAF] == 0 else (frames >> 9) + 1

    def _update_limits(self) -> None:
        lim = self.lim
        for i, t in ((X.LIM_GUP, self.gup), (X.LIM_GLEAF, self.gleaf), (X.LIM_SUP, self.sup),
                     (X.LIM_SLEAF, self.sleaf), (X.LIM_EUP, self.eup)):
            lim[i] = (t.shape[0] // pt.STRIDE) // 2
        lim[X.LIM_HFREE] = self.hfree.shape[0]
        lim[X.LIM_SCR] = self.scr.shape[1] - X.SCR_SLACK

    def state(self):
        tag, stamp, val, geom, last, clock = self.caches
        return X.MachineState(
            scalars=self.S, counters=self.C, cache_tag=tag, cache_stamp=stamp, cache_val=val,
            cache_geom=geom, cache_last=last, cache_clock=clock, guest_upper=self.gup,
            guest_leaf=self.gleaf, shadow_upper=self.sup, shadow_leaf=self.sleaf,
            ept_upper=self.eup, frame_refcount=self.refcnt, p2m=self.p2m, guest_free=self.gfree,
            host_free=self.hfree, spaces=self.slots, oos_pages=self.oos, limits=self.lim,
            scratch=self.scr)

    def grow(self) -> None:
        """Grow whatever the next record may overflow (tables rehashed, free stacks extended)."""
        S, need = self.S, int(self.S[X.S_NEED])
        for name, used in (("gup", X.S_GUP_USED), ("gleaf", X.S_GLEAF_USED),
                           ("sup", X.S_SUP_USED), ("sleaf", X.S_SLEAF_USED),
                           ("eup", X.S_EUP_USED)):
            t = getattr(self, name)
            if S[used] + need > (t.shape[0] // pt.STRIDE) // 2:
                nt = pt.grow(t, need)
                setattr(self, name, nt)
                S[used] = pt.live_count(nt)
        if S[X.S_HFREE_TOP] + need > self.hfree.shape[0]:
            cap = max(2 * self.hfree.shape[0], int(S[X.S_HFREE_TOP]) + 2 * need)
            self.hfree = np.concatenate([self.hfree, np.zeros(cap - len(self.hfree), np.int64)])
        used = max(int(S[X.S_GLEAF_USED] + S[X.S_GUP_USED]),
                   int(S[X.S_SLEAF_USED] + S[X.S_SUP_USED]))
        if used + need + X.SCR_SLACK > self.scr.shape[1]:
            self.scr = np.zeros((5, 2 * (used + need) + X.SCR_SLACK), np.int64)
        self._update_limits()

    # ------------------------------------------------------------------ validation
    def prepare(self, tr: Trace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validate a chunk and map pids to slots (and give its line bitmaps as a writable
        column).  Raises TraceError naming the record."""
        n = len(tr)
        base = self.records_done
        kind = tr.kind
        forks = kind == Kind.FORK
        fork_idx = np.nonzero(forks)[0]
        child = tr.addr[fork_idx]
        if (child > np.uint64(2**62)).any():
            r = int(fork_idx[np.argmax(child > np.uint64(2**62))])
            raise RecordError(base + r, f"fork child pid {int(tr.addr[r])} out of range")
        pid_ids, child_ids_f = self._dense_ids(tr.pid, child.astype(np.int64))
        child_ids = np.zeros(n, np.int64)
        child_ids[fork_idx] = child_ids_f
        if self._slot_buf.shape[0] < n:  # reused across chunks: no fresh pages per chunk
            self._slot_buf = np.empty(n, np.int64)
            self._arg_buf = np.empty(n, np.int64)
        slot = self._slot_buf[:n]  # _prepare writes every element before any is read
        arg = self._arg_buf[:n]
        va_limit = np.uint64(1) << np.uint64(self.va_bits)
        lines = tr.lines
        if not lines.flags.writeable:  # the shared read-only zeros: one compiled signature
            if len(self._zeros) < n:
                self._zeros = np.zeros(n, np.uint64)
            lines = self._zeros[:n]
        err, r, self.nfree = _prepare(kind, tr.addr, tr.size, tr.repeat, lines, pid_ids,
                                      child_ids, _VALID_KIND,
                                      va_limit, self.alive, self.slot_of, self.free_slots,
                                      self.nfree, slot, arg)
        if err:
            p = int(tr.pid[r])
            msg = {
                1: f"process {p} has a record after its exit",
                2: f"more than {self.config.guest.max_processes} processes alive at once",
                3: f"fork creates child pid {int(tr.addr[r])}, which is already alive",
                4: f"unknown record kind {int(kind[r])} (expected one of "
                   f"{', '.join(f'{int(k)}={k.name}' for k in Kind)})",
                5: f"address range 0x{int(tr.addr[r]):x}+{int(tr.size[r])} is beyond the "
                   f"{self.va_bits}-bit guest virtual address space "
                   f"({self.config.guest.levels}-level guest page tables)",
                6: f"access size {int(tr.size[r])} is not a plausible single access "
                   f"(expected at most 1 MiB)",
                7: "repeat count 0 (an access record stands for at least one access)",
                8: f"repeat count {int(tr.repeat[r])} on an access that crosses a page "
                   f"(folded accesses must stay on one 4 KiB page)",
                9: f"repeat count {int(tr.repeat[r])} on a {_kind_name(int(kind[r]))} event "
                   f"(expected 1)",
                10: f"a lines bitmap (0x{int(tr.lines[r]):x}) on a {_kind_name(int(kind[r]))} "
                    f"record (bitmaps describe LOAD, STORE and MODIFY records only)",
            }[err]
            raise RecordError(base + r, msg)
        return slot, arg, lines

    def _dense_ids(self, pids: np.ndarray, children: np.ndarray):
        """Map pids (and fork children) to dense ids 0..P-1, stable across chunks."""
        allp = np.concatenate([pids, children]) if len(children) else pids
        lo = int(allp.min()) if len(allp) else 0
        hi = int(allp.max()) if len(allp) else 0
        if lo == hi:
            uniq = allp[:1]  # the common single-process chunk
        elif lo >= 0 and hi < (1 << 22):  # small pids: a counting pass instead of a sort
            uniq = np.nonzero(np.bincount(allp, minlength=hi + 1))[0].astype(np.int64)
        else:
            uniq = np.unique(allp)
        for p in uniq.tolist():
            if p not in self.pid_ids:
                self.pid_ids[p] = len(self.pid_ids)
        ndense = len(self.pid_ids)
        if ndense > len(self.alive):
            cap = max(2 * len(self.alive), ndense)
            self.alive = np.concatenate([self.alive, np.zeros(cap - len(self.alive), np.int8)])
            self.slot_of = np.concatenate([self.slot_of,
                                           np.zeros(cap - len(self.slot_of), np.int64)])
        ids = np.array([self.pid_ids[p] for p in uniq.tolist()], np.int64)
        if len(uniq) == 1:
            return np.full(len(pids), ids[0], np.int64), np.full(len(children), ids[0], np.int64)
        return ids[np.searchsorted(uniq, pids)], ids[np.searchsorted(uniq, children)]

    # ------------------------------------------------------------------ running
    def run_chunk(self, tr: Trace, on_period) -> None:
        """Run one chunk.  ``self.boundary`` is the instruction count that ends the current
        period; ``on_period()`` is called at each period end and must advance it."""
        slot, arg, lines = self.prepare(tr)
        pos, n = 0, len(tr)
        while pos < n:
            if self.pending_mode is not None:
                self.switch(self.pending_mode)
                self.pending_mode = None
            status, pos = run_records(self.state(), tr.kind, tr.addr, tr.size, tr.icount,
                                      tr.repeat, lines, slot, arg, pos, n, self.boundary,
                                      self.sync)
            if status == X.ST_GROW:
                self.grow_or_fail(self.records_done + pos)
            elif status == X.ST_PERIOD:
                self.position = self.records_done + pos  # records run so far
                on_period()
            elif status == X.ST_ERROR:
                if self.S[X.S_ERROR] == X.ERR_OOM:
                    g = self.config.guest
                    raise RecordError(
                        self.records_done + pos, f"the guest ran out of memory: its "
                        f"{g.memory_mib:,} MiB (guest.memory_mib) hold fewer free frames than "
                        f"the trace's processes need; raise guest.memory_mib")
                raise RecordError(self.records_done + pos, "internal error: translation did "
                                  "not settle (please report this trace)")
        self.records_done += n

    def switch(self, mode: int) -> None:
        # Destroying shadows frees host frames onto hfree: make room first.
        need = int(self.slots[:, X.SL_NSHADOW].sum()) + 16
        self.S[X.S_NEED] = need
        self.grow_or_fail(self.records_done)
        switch_mode(self.state(), mode)

    # ------------------------------------------------------------------ growth failures
    def state_bytes(self) -> int:
        """Bytes of the state's arrays."""
        return sum(a.nbytes for a in self.state())

    def growth_bytes(self) -> int:
        """What ``grow`` allocates for the current ``S_NEED`` (the tables it would rebuild,
        the free stack and the scratch rows), computed without allocating."""
        S, need = self.S, int(self.S[X.S_NEED])
        total = 0
        for name, used in (("gup", X.S_GUP_USED), ("gleaf", X.S_GLEAF_USED),
                           ("sup", X.S_SUP_USED), ("sleaf", X.S_SLEAF_USED),
                           ("eup", X.S_EUP_USED)):
            t = getattr(self, name)
            if S[used] + need > (t.shape[0] // pt.STRIDE) // 2:
                cap = max(2 * (int(S[used]) + need) + 16, t.shape[0] // pt.STRIDE)
                total += (1 << max(4, (cap - 1).bit_length())) * pt.STRIDE * 8
        if S[X.S_HFREE_TOP] + need > self.hfree.shape[0]:
            total += 8 * max(2 * self.hfree.shape[0], int(S[X.S_HFREE_TOP]) + 2 * need)
        used = max(int(S[X.S_GLEAF_USED] + S[X.S_GUP_USED]),
                   int(S[X.S_SLEAF_USED] + S[X.S_SUP_USED]))
        if used + need + X.SCR_SLACK > self.scr.shape[1]:
            total += 5 * 8 * (2 * (used + need) + X.SCR_SLACK)
        return total

    def grow_or_fail(self, record: int) -> None:
        """``grow``, or a ``SimulatorMemoryError`` (no traceback) when the memory for the
        bigger tables cannot be had: it names the records run, the pages mapped so far, the
        state's size and the bytes the growth needed."""
        try:
            self.grow()
        except MemoryError:
            pages = int(self.S[X.S_GLEAF_USED])
            raise SimulatorMemoryError(
                f"the simulator ran out of memory at record {record:,}: after mapping about "
                f"{pages:,} distinct pages its state takes {fmt_bytes(self.state_bytes())} and "
                f"growing its tables needs {fmt_bytes(self.growth_bytes())} more (the state "
                f"grows by a few hundred bytes per distinct page touched: README, "
                f"Performance); run the trace on a machine with more memory",
                record=record, pages=pages) from None


