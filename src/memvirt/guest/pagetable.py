"""Radix page tables stored as open-addressing hash tables of entries.

A table (guest page table, shadow table, EPT) is two hash tables: ``up`` for the
upper-level entries (few, cache-friendly) and ``leaf`` for the last level.  An entry
is keyed by (address space, level, prefix) where prefix = address >> shift(level):
the entry at level L covers 2**shift(L) bytes.  Each slot holds 4 int64 words
``key, val, aux, spare`` so one lookup touches one cache line.

- guest upper entry: val = gfn of the child page-table page, aux = its hfn (or -1)
- guest leaf entry:  val = gfn << 2 | COW << 1 | W, aux = hfn of the data frame (or -1)
- shadow upper entry: val = hfn of the child shadow page
- shadow leaf entry:  val = hfn << 1 | W
- EPT upper entry:    val = hfn of the child EPT page

The Python side grows a table (``grow``) before it is half full, counting
tombstones, so probing always terminates; the kernels never overwrite live keys.
"""

from __future__ import annotations

import numpy as np
from numba import njit

EMPTY = -1
TOMB = -2
STRIDE = 4


def new_table(capacity: int) -> np.ndarray:
    cap = 1 << max(4, int(capacity - 1).bit_length())
    t = np.zeros(cap * STRIDE, np.int64)
    t[0::STRIDE] = EMPTY
    return t


@njit(cache=True, _nrt=False, inline="always")
def make_key(space, level, prefix):
    # space < 2**12, level < 8, prefix < 2**45 (57-bit VA, 4 KiB pages): fits in 60 bits.
    return (space << 48) | (level << 45) | prefix


@njit(cache=True, _nrt=False, inline="always")
def hash_key(key):
    h = key * -7046029254386353131  # 0x9E3779B97F4A7C15 as int64 (Fibonacci hashing)
    return h ^ (h >> 29)


@njit(cache=True, _nrt=False, inline="always")
def find(t, key):
    """Slot index of ``key`` or -1."""
    mask = (t.shape[0] // STRIDE) - 1
    i = hash_key(key) & mask
    while True:
        k = t[i * STRIDE]
        if k == key:
            return i
        if k == EMPTY:
            return -1
        i = (i + 1) & mask


@njit(cache=True, _nrt=False)
def put(t, used, key, val, aux):
    """Insert or update; ``used[0]`` counts live entries plus tombstones.  Returns slot."""
    mask = (t.shape[0] // STRIDE) - 1
    i = hash_key(key) & mask
    first_free = -1
    while True:
        k = t[i * STRIDE]
        if k == key:
            t[i * STRIDE + 1] = val
            t[i * STRIDE + 2] = aux
            return i
        if k == EMPTY:
            break
        if k == TOMB and first_free < 0:
            first_free = i
        i = (i + 1) & mask
    if first_free >= 0:
        i = first_free  # reusing a tombstone does not change used
    else:
        used[0] += 1
    t[i * STRIDE] = key
    t[i * STRIDE + 1] = val
    t[i * STRIDE + 2] = aux
    t[i * STRIDE + 3] = 0
    return i


@njit(cache=True, _nrt=False)
def remove(t, key):
    i = find(t, key)
    if i >= 0:
        t[i * STRIDE] = TOMB
        return True
    return False


def live_count(t: np.ndarray) -> int:
    return int(np.count_nonzero(t[0::STRIDE] >= 0))


def grow(t: np.ndarray, min_free: int) -> np.ndarray:
    """A new table holding the live entries of ``t`` with room for ``min_free`` more (load <= 1/2)."""
    keys = t[0::STRIDE]
    live = np.nonzero(keys >= 0)[0]
    new = new_table(max(2 * (len(live) + min_free) + 16, t.shape[0] // STRIDE))
    _reinsert(new, t, live)
    return new


@njit(cache=True)
def _reinsert(new, old, live):
    used = np.zeros(1, np.int64)
    for i in live:
        put(new, used, old[i * STRIDE], old[i * STRIDE + 1], old[i * STRIDE + 2])
        j = find(new, old[i * STRIDE])
        new[j * STRIDE + 3] = old[i * STRIDE + 3]


@njit(cache=True, _nrt=False)
def collect(up, leaf, space, levels, bits, lo_vpn, hi_vpn, scr):
    """Present entries of address space ``space`` covering pages [lo_vpn, hi_vpn).

    Writes leaf vpns to ``scr[0]``, upper-entry levels and prefixes to ``scr[1]`` and
    ``scr[2]`` (parent before child) and returns (number of leaves, number of upper
    entries).  ``scr[3:5]`` is the traversal stack.  The driver keeps ``scr`` larger
    than any table plus the widest level, so this never writes out of bounds.
    Visits only present subtrees.
    """
    nl = 0
    nu = 0
    if hi_vpn <= lo_vpn:
        return 0, 0
    top = levels - 1
    ns = 0
    sh = bits * top  # vpn -> prefix at the top level
    for p in range((hi_vpn - 1) >> sh, (lo_vpn >> sh) - 1, -1):
        if find(up, make_key(space, top, p)) >= 0:
            scr[3, ns] = top
            scr[4, ns] = p
            ns += 1
    while ns > 0:
        ns -= 1
        lv = scr[3, ns]
        p = scr[4, ns]
        scr[1, nu] = lv
        scr[2, nu] = p
        nu += 1
        csh = bits * (lv - 1)
        c_lo = max(p << bits, lo_vpn >> csh)
        c_hi = min((p << bits) + (1 << bits) - 1, (hi_vpn - 1) >> csh)
        if lv == 1:
            for c in range(c_lo, c_hi + 1):
                if find(leaf, make_key(space, 0, c)) >= 0:
                    scr[0, nl] = c
                    nl += 1
        else:
            for c in range(c_hi, c_lo - 1, -1):
                if find(up, make_key(space, lv - 1, c)) >= 0:
                    scr[3, ns] = lv - 1
                    scr[4, ns] = c
                    ns += 1
    return nl, nu
