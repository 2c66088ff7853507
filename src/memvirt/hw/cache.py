"""Set-associative LRU structures (TLBs, paging-structure caches, nested TLB, data caches).

All structures of one machine live in three flat arrays (``tag``, ``stamp``, ``val``)
described by ``geom[cid] = (base, sets, ways, set_mask)``.  A structure with zero sets
is disabled: every lookup misses and inserts do nothing.  LRU is kept with a global
access clock (``clock[0]``): the way with the smallest stamp in a set is the victim.
Empty ways have stamp 0 (every used way has a stamp >= 1), so the victim is the first
empty way if there is one, else the least recently used: a plain argmin.

``last[cid] = (key, index)`` remembers the most recent hit or insert: the same key
again is a hit that changes nothing in the LRU order (it is already the most
recently used), so the common case of consecutive accesses to one page costs
one comparison.  Anything that removes entries resets it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

EMPTY = -1

# Structure ids.
ITLB = 0
DTLB = 1
STLB = 2
PSC0 = 2  # PSC for guest level L (1..4) is PSC0 + L  -> 3..6
NTLB = 7
NPSC0 = 7  # nested PSC for EPT level L (1..4) is NPSC0 + L -> 8..11
L1D = 12  # data caches, keyed by physical 64-byte line (hw/memory.py)
L2C = 13
L3C = 14
NSTRUCT = 15


def allocate(geometries: list[tuple[int, int]]):
    """Arrays for structures given as (sets, ways); sets = 0 disables one."""
    geom = np.zeros((len(geometries), 4), np.int64)
    base = 0
    for i, (sets, ways) in enumerate(geometries):
        if sets and sets & (sets - 1):
            raise ValueError(f"structure {i}: sets ({sets}) must be a power of two")
        geom[i] = (base, sets, ways if sets else 0, max(sets - 1, 0))
        base += sets * (ways if sets else 0)
    size = max(base, 1)
    tag = np.full(size, EMPTY, np.int64)
    stamp = np.zeros(size, np.int64)
    val = np.zeros(size, np.int64)
    last = np.full((len(geometries), 2), EMPTY, np.int64)
    clock = np.zeros(1, np.int64)
    return tag, stamp, val, geom, last, clock


@njit(cache=True, _nrt=False, inline="always")
def _ix(i):
    """An index known to be in range (a way of a structure), as unsigned: numba then skips
    the negative-index wraparound (a shift, a mask and an add per access in the scans)."""
    return np.uint64(i)


@njit(cache=True, _nrt=False, inline="always")
def _use(stamp, last, clock, cid, key, i):
    """Make way ``i`` (holding ``key``) the most recently used."""
    clock[0] += 1
    stamp[_ix(i)] = clock[0]
    last[cid, 0] = key
    last[cid, 1] = i


@njit(cache=True, _nrt=False, inline="always")
def retouch(tag, stamp, last, clock, cid, key, i):
    """Make ``key`` (remembered at way ``i`` by ``last``) the most recently used again if it
    is still there."""
    if key != EMPTY and i >= 0 and tag[i] == key:
        _use(stamp, last, clock, cid, key, i)


@njit(cache=True, _nrt=False, inline="always")
def lookup(tag, stamp, geom, last, clock, cid, key):
    """Index of ``key`` in structure ``cid`` (and mark it most recently used), or -1."""
    if last[cid, 0] == key:
        return last[cid, 1]
    sets = geom[cid, 1]
    if sets == 0:
        return -1
    ways = geom[cid, 2]
    b = geom[cid, 0] + (key & geom[cid, 3]) * ways
    for w in range(ways):
        if tag[_ix(b + w)] == key:
            _use(stamp, last, clock, cid, key, b + w)
            return b + w
    return -1


@njit(cache=True, _nrt=False, inline="always")
def _victim(stamp, b, ways):
    """The way of the set at ``b`` to fill: empty ways have stamp 0, so the first empty way,
    else the LRU: a plain argmin, written branch-free (selects) because its outcome is
    unpredictable."""
    victim = b
    best = stamp[_ix(b)]
    for w in range(1, ways):
        sw = stamp[_ix(b + w)]
        lower = sw < best
        best = sw if lower else best
        victim = b + w if lower else victim
    return victim


@njit(cache=True, _nrt=False, inline="always")
def _fill(tag, stamp, val, last, clock, cid, b, ways, key, value):
    """Put ``key`` into the set at ``b`` over its victim; returns the evicted key."""
    victim = _victim(stamp, b, ways)
    old = tag[_ix(victim)]
    tag[_ix(victim)] = key
    val[_ix(victim)] = value
    _use(stamp, last, clock, cid, key, victim)
    return old


@njit(cache=True, _nrt=False, inline="always")
def fill_line(tag, stamp, last, clock, cid, b, ways, key):
    """``_fill`` for a data cache (the set at ``b`` misses ``key``): its entries carry no
    value (``touch`` inserts 0 and nothing reads it), so ``val`` is left alone (it stays 0)
    and the fill touches two arrays instead of three."""
    victim = _victim(stamp, b, ways)
    tag[_ix(victim)] = key
    _use(stamp, last, clock, cid, key, victim)


@njit(cache=True, _nrt=False, inline="always")
def find_way(tag, b, ways, key):
    """The way of the set at ``b`` that holds ``key`` (the first if several, as a scan that
    stops at the first match), or -1: a branch-free scan (no early exit to mispredict), from
    the last way down."""
    hit = -1
    for w in range(ways - 1, -1, -1):
        hit = b + w if tag[_ix(b + w)] == key else hit
    return hit


@njit(cache=True, _nrt=False, inline="always")
def insert(tag, stamp, val, geom, last, clock, cid, key, value):
    """Insert ``key`` (must not be present) evicting the LRU way; returns the evicted key."""
    sets = geom[cid, 1]
    if sets == 0:
        return EMPTY
    ways = geom[cid, 2]
    return _fill(tag, stamp, val, last, clock, cid,
                 geom[cid, 0] + (key & geom[cid, 3]) * ways, ways, key, value)


@njit(cache=True, _nrt=False, inline="always")
def touch(tag, stamp, val, geom, last, clock, cid, key):
    """Look ``key`` up and insert it on a miss, in one pass over the set (a data cache).

    Same outcome and LRU state as ``lookup`` followed by ``insert`` on a miss.  Returns
    True on a hit.
    """
    if last[cid, 0] == key:
        return True
    sets = geom[cid, 1]
    if sets == 0:
        return False
    ways = geom[cid, 2]
    b = geom[cid, 0] + (key & geom[cid, 3]) * ways
    hit = -1  # a branch-free scan: hits and misses are equally unpredictable here
    for w in range(ways):
        hit = b + w if tag[_ix(b + w)] == key else hit
    if hit >= 0:
        _use(stamp, last, clock, cid, key, hit)
        return True
    fill_line(tag, stamp, last, clock, cid, b, ways, key)  # its value: 0, as val already is
    return False


@njit(cache=True, _nrt=False)
def invalidate(tag, stamp, geom, last, cid, key):
    sets = geom[cid, 1]
    if sets == 0:
        return
    ways = geom[cid, 2]
    b = geom[cid, 0] + (key & geom[cid, 3]) * ways
    for w in range(ways):
        if tag[b + w] == key:
            tag[b + w] = EMPTY
            stamp[b + w] = 0
    last[cid, 0] = EMPTY


@njit(cache=True, _nrt=False)
def flush(tag, stamp, geom, last, cid):
    n = geom[cid, 1] * geom[cid, 2]
    b = geom[cid, 0]
    for i in range(b, b + n):
        tag[i] = EMPTY
        stamp[i] = 0
    last[cid, 0] = EMPTY


@njit(cache=True, _nrt=False)
def access_stream(keys, tag, stamp, val, geom, last, clock, cid):
    """Run a key stream through one structure; returns (hits, misses, evictions).

    The building block used by tests against independent cache models.
    """
    hits = 0
    misses = 0
    evictions = 0
    for k in keys:
        if lookup(tag, stamp, geom, last, clock, cid, k) >= 0:
            hits += 1
        else:
            misses += 1
            if insert(tag, stamp, val, geom, last, clock, cid, k, 0) != EMPTY:
                evictions += 1
    return hits, misses, evictions


def simulate_cache(addresses: np.ndarray, sets: int, ways: int, line_bytes: int):
    """An LRU cache/TLB of ``sets`` x ``ways`` with ``line_bytes`` lines over an address list.

    Returns (hits, misses, evictions).  A TLB is this with line_bytes = page size.
    """
    if line_bytes <= 0 or line_bytes & (line_bytes - 1):
        raise ValueError("line_bytes must be a power of two")
    addrs = np.asarray(addresses, dtype=np.uint64)
    keys = (addrs >> np.uint64(line_bytes.bit_length() - 1)).astype(np.int64)
    tag, stamp, val, geom, last, clock = allocate([(sets, ways)])
    h, m, e = access_stream(keys, tag, stamp, val, geom, last, clock, 0)
    return int(h), int(m), int(e)
