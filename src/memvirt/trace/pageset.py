"""Distinct pages touched, counted as a trace streams by: a compiled open-addressing hash set.

Used by the trace writer (footprint statistics stored in a Parquet file's metadata) and by
``memvirt info``.  Memory grows with the footprint (16 bytes per distinct page at most), not
with the trace; every insert is O(1), so a 10^9-record trace is counted in one pass.
"""

from __future__ import annotations

import numpy as np
from numba import njit

EMPTY = -1
PID_BITS = 18  # dense process ids per set (262,144 processes)
VPN_BITS = 45  # 57-bit virtual addresses, 4 KiB pages
MAX_SPAN_PAGES = 1 << 16  # an access spanning more pages counts its first 65,536 (none do)


RECENT = 64  # direct-mapped filter of recently inserted keys in front of the hash table


@njit(cache=True)
def _insert_pages(table, used, recent, dense_pid, addr, size):
    """Insert (process, page) keys of every page each access touches.  Returns False when
    the table got more than half full (the caller grows it and calls again; re-inserting
    is harmless).  ``table`` length is a power of two.  ``recent`` holds keys known to be
    in the table (consecutive accesses mostly revisit a few pages: they skip the probe)."""
    mask = table.shape[0] - 1
    limit = table.shape[0] // 2
    for i in range(addr.shape[0]):
        a = addr[i]
        s = size[i]
        first = a >> np.uint64(12)
        last = first
        if s > np.uint64(1):
            end = a + (s - np.uint64(1))
            if end >= a:  # no wrap at the top of the address space
                last = end >> np.uint64(12)
        if last - first >= np.uint64(MAX_SPAN_PAGES):
            last = first + np.uint64(MAX_SPAN_PAGES - 1)
        vpn = first
        while True:
            key = (np.int64(dense_pid[i]) << VPN_BITS) | np.int64(vpn & np.uint64((1 << VPN_BITS) - 1))
            slot = key & (RECENT - 1)
            if recent[slot] == key:
                if vpn == last:
                    break
                vpn += np.uint64(1)
                continue
            recent[slot] = key
            h = key * -7046029254386353131
            j = (h ^ (h >> 29)) & mask
            while True:
                t = table[j]
                if t == key:
                    break
                if t == EMPTY:
                    table[j] = key
                    used[0] += 1
                    if used[0] > limit:
                        return False
                    break
                j = (j + 1) & mask
            if vpn == last:
                break
            vpn += np.uint64(1)
    return True


@njit(cache=True)
def _rehash(old, new):
    mask = new.shape[0] - 1
    for t in old:
        if t == EMPTY:
            continue
        h = t * -7046029254386353131
        j = (h ^ (h >> 29)) & mask
        while new[j] != EMPTY:
            j = (j + 1) & mask
        new[j] = t


class PageSet:
    """Distinct (process, 4 KiB page) pairs, and distinct pages over all processes."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._per = np.full(capacity, EMPTY, np.int64)
        self._per_used = np.zeros(1, np.int64)
        self._any = np.zeros(0, np.int64)  # made when a second process appears
        self._any_used = np.zeros(1, np.int64)
        self._per_recent = np.full(RECENT, EMPTY, np.int64)
        self._any_recent = np.full(RECENT, EMPTY, np.int64)
        self._any_active = False
        self._pid_ids: dict[int, int] = {}

    def _dense(self, pid: np.ndarray) -> np.ndarray:
        if len(pid) and pid[0] == pid[-1] and np.all(pid == pid[0]):
            uniq = pid[:1]
        else:
            uniq = np.unique(pid)
        for p in uniq.tolist():
            if p not in self._pid_ids:
                if len(self._pid_ids) >= 1 << PID_BITS:
                    raise ValueError(f"more than {1 << PID_BITS} processes")
                self._pid_ids[p] = len(self._pid_ids)
        ids = np.array([self._pid_ids[p] for p in uniq.tolist()], np.int64)
        if len(uniq) == 1:
            return np.full(len(pid), ids[0], np.int64)
        return ids[np.searchsorted(uniq, pid)]

    def add(self, pid: np.ndarray, addr: np.ndarray, size: np.ndarray) -> None:
        """Add the pages touched by accesses (``addr``/``size`` uint64, ``pid`` int64)."""
        if not len(addr):
            return
        dense = self._dense(pid)
        if len(self._pid_ids) > 1 and not self._any_active:
            # Until a second process appears every key has process id 0, so the union is
            # the one process's set: start it from a copy.
            self._any, self._any_used = self._per.copy(), self._per_used.copy()
            self._any_active = True
        self._per = self._insert(self._per, self._per_used, self._per_recent, dense, addr, size)
        if self._any_active:
            self._any = self._insert(self._any, self._any_used, self._any_recent,
                                     np.zeros(len(addr), np.int64), addr, size)

    def _insert(self, table, used, recent, ids, addr, size) -> np.ndarray:
        while not _insert_pages(table, used, recent, ids, addr, size):
            table = self._grown(table)
        return table

    @staticmethod
    def _grown(t: np.ndarray) -> np.ndarray:
        new = np.full(2 * len(t), EMPTY, np.int64)
        _rehash(t, new)
        return new

    @property
    def pages(self) -> int:
        """Distinct (process, page) pairs: the footprint summed over processes."""
        return int(self._per_used[0])

    @property
    def pages_any_process(self) -> int:
        return int((self._any_used if self._any_active else self._per_used)[0])

    def per_process(self) -> dict[int, int]:
        """pid -> distinct pages it touched."""
        keys = self._per[self._per != EMPTY]
        counts = np.bincount((keys >> VPN_BITS).astype(np.int64), minlength=len(self._pid_ids))
        return {p: int(counts[i]) for p, i in sorted(self._pid_ids.items())}
