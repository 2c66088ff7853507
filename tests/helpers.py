"""Small trace builders and independent reference models for the tests."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from memvirt import counters as K
from memvirt.config import Config
from memvirt.trace.records import Kind, Trace

L, S, M, IF = int(Kind.LOAD), int(Kind.STORE), int(Kind.MODIFY), int(Kind.IFETCH)
MMAP, MUNMAP, BRK, FORK, EXEC, EXIT, SWITCH = (int(k) for k in (
    Kind.MMAP, Kind.MUNMAP, Kind.BRK, Kind.FORK, Kind.EXEC, Kind.EXIT, Kind.SWITCH))
PAGE = 4096
BASE = 0x4000_0000


def rec(kind, addr=0, size=8, pid=1, icount=1):
    return (kind, addr, size, pid, icount)


def trace(records) -> Trace:
    return Trace.from_records(records)


def no_caches_config(levels=4, ept_levels=4, **extra) -> Config:
    """Every TLB, walk cache and the PTE cache off: each access walks, each walk is full."""
    over = {
        "guest.levels": levels, "host.ept_levels": ept_levels,
        "hw.itlb.entries": 0, "hw.dtlb.entries": 0, "hw.stlb.entries": 0,
        "hw.psc.entries": 0, "hw.nested_tlb.entries": 0, "hw.nested_psc.entries": 0,
        "hw.l1d.entries": 0, "hw.l2.entries": 0, "hw.l3.entries": 0,
    }
    over.update(extra)
    return Config().with_overrides(over)


class LRUCache:
    """A plain set-associative LRU cache: the independent reference for TLB miss counts."""

    def __init__(self, sets: int, ways: int, line_shift: int):
        self.sets = [OrderedDict() for _ in range(sets)]
        self.ways = ways
        self.shift = line_shift
        self.hits = self.misses = self.evictions = 0

    def access(self, addr: int) -> bool:
        line = addr >> self.shift
        st = self.sets[line % len(self.sets)]
        if line in st:
            st.move_to_end(line)
            self.hits += 1
            return True
        self.misses += 1
        if len(st) >= self.ways:
            st.popitem(last=False)
            self.evictions += 1
        st[line] = True
        return False


def page_stream(records, kinds=(L, S, M)):
    """The pages translated by data records: M twice, page-crossing accesses once per page."""
    out = []
    for k, addr, size, _pid, _ic in records:
        if k not in kinds:
            continue
        first, last = addr >> 12, (addr + max(size, 1) - 1) >> 12
        for p in range(first, last + 1):
            out.extend([p << 12] * (2 if k == M else 1))
    return out


def arr_pages(n: int) -> np.ndarray:
    return BASE + np.arange(n, dtype=np.int64) * PAGE


# Counters that depend on the order of line accesses inside a page run: a collapsed record
# keeps the set of lines its accesses touched, not their order or how many lines each touched
# (docs/mvtrace-format.md), so with the data caches on these agree with the full trace only
# closely; every other counter must agree exactly.
CACHE_LEVEL_COUNTERS = frozenset(
    list(range(K.REF_L1, K.REF_DRAM + 1)) + list(range(K.NREF_L1, K.NREF_DRAM + 1))
    + list(range(K.DATA_L1, K.DATA_DRAM + 1)) + [K.VMM_LINE_FILLS])


def counter_diff(a, b, rel: float = 0.005, slack: int = 16) -> dict:
    """The counters of ``a`` and ``b`` (counter vectors) that differ: exactly, or for the
    cache-level counters by more than ``rel`` (relative) and ``slack`` (absolute)."""
    out = {}
    for i, (x, y) in enumerate(zip(a, b)):
        x, y = int(x), int(y)
        if x == y:
            continue
        if i in CACHE_LEVEL_COUNTERS and abs(x - y) <= max(slack, rel * max(x, y)):
            continue
        out[K.NAMES[i]] = (x, y)
    return out
