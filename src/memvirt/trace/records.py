"""The in-memory trace: one record per memory access or guest OS event, as columns.

Every reader (Parquet, Lackey, ChampSim, capture, synthetic generators) produces
``Trace`` chunks with exactly these columns, and the engine consumes nothing else.

Columns (all the same length):

=========  ========  ===========================================================
column     dtype     meaning
=========  ========  ===========================================================
kind       uint8     record kind, one of ``Kind`` below
addr       uint64    access: guest virtual address (gVA);
                     MMAP/MUNMAP: start of the range; BRK: the new program break;
                     FORK: the child's pid; other events: 0
size       uint64    access: bytes accessed; MMAP/MUNMAP: length of the range in
                     bytes; other events: 0
pid        int64     the guest process the record belongs to (for SWITCH: the
                     process switched to; for FORK: the parent)
icount     uint32    instructions retired with this record.  Lackey-style traces
                     set 1 on IFETCH records and 0 elsewhere; traces without
                     fetches carry the count on their data records; a collapsed
                     fetch record of repeat n carries n.
repeat     uint32    access: the number of accesses the record stands for (1, or
                     more in a collapsed capture: the first access at ``addr``, the
                     others of the same kind on the same 4 KiB page, see
                     docs/mvtrace-format.md); events: 1.  Optional when building
                     a ``Trace`` (default all 1).
=========  ========  ===========================================================

A process exists from its first record (processes running when the trace
starts) or from the FORK that creates it; after EXIT it has no more records.
Whenever the record's pid differs from the running one, the guest loads CR3
(a context switch); SWITCH records make a switch explicit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class Kind(IntEnum):
    IFETCH = 0
    LOAD = 1
    STORE = 2
    MODIFY = 3  # load then store of the same bytes (Lackey "M")
    MMAP = 8
    MUNMAP = 9
    BRK = 10
    FORK = 11
    EXEC = 12
    EXIT = 13
    SWITCH = 14


ACCESS_KINDS = (Kind.IFETCH, Kind.LOAD, Kind.STORE, Kind.MODIFY)
EVENT_KINDS = (Kind.MMAP, Kind.MUNMAP, Kind.BRK, Kind.FORK, Kind.EXEC, Kind.EXIT, Kind.SWITCH)
VALID_KINDS = np.array(sorted(int(k) for k in Kind), dtype=np.uint8)

COLUMNS: dict[str, np.dtype] = {
    "kind": np.dtype(np.uint8),
    "addr": np.dtype(np.uint64),
    "size": np.dtype(np.uint64),
    "pid": np.dtype(np.int64),
    "icount": np.dtype(np.uint32),
    "repeat": np.dtype(np.uint32),
}


@dataclass
class Trace:
    """A chunk of records (columnar) plus free-form metadata (source, command, ...)."""

    kind: np.ndarray
    addr: np.ndarray
    size: np.ndarray
    pid: np.ndarray
    icount: np.ndarray
    repeat: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.repeat is None:
            self.repeat = np.ones(len(np.asarray(self.kind)), np.uint32)
        n = None
        for name, dt in COLUMNS.items():
            col = np.ascontiguousarray(np.asarray(getattr(self, name)), dtype=None)
            if col.ndim != 1:
                raise ValueError(f"trace column '{name}' must be one-dimensional")
            if col.dtype != dt:
                if col.size and not np.can_cast(col.dtype, dt, casting="same_kind") and not (
                    np.issubdtype(col.dtype, np.integer) and np.issubdtype(dt, np.integer)
                ):
                    raise ValueError(f"trace column '{name}' has dtype {col.dtype}, expected {dt}")
                col = col.astype(dt)
            setattr(self, name, col)
            if n is None:
                n = len(col)
            elif len(col) != n:
                raise ValueError(f"trace column '{name}' has {len(col)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.kind)

    @classmethod
    def empty(cls, meta: dict | None = None) -> Trace:
        return cls(**{k: np.zeros(0, dt) for k, dt in COLUMNS.items()}, meta=dict(meta or {}))

    @classmethod
    def from_records(cls, records, meta: dict | None = None) -> Trace:
        """Build from an iterable of (kind, addr, size, pid, icount[, repeat]) tuples
        (tests, examples)."""
        rows = [tuple(r) if len(r) == 6 else (*r, 1) for r in records]
        if not rows:
            return cls.empty(meta)
        cols = list(zip(*rows))
        if len(cols) != 6 or any(len(r) != 6 for r in rows):
            raise ValueError("each record must be (kind, addr, size, pid, icount[, repeat])")
        return cls(
            kind=np.array(cols[0], np.uint8),
            addr=np.array(cols[1], np.uint64),
            size=np.array(cols[2], np.uint64),
            pid=np.array(cols[3], np.int64),
            icount=np.array(cols[4], np.uint32),
            repeat=np.array(cols[5], np.uint32),
            meta=dict(meta or {}),
        )

    @classmethod
    def concat(cls, parts: list[Trace], meta: dict | None = None) -> Trace:
        parts = [p for p in parts]
        if not parts:
            return cls.empty(meta)
        return cls(
            **{k: np.concatenate([getattr(p, k) for p in parts]) for k in COLUMNS},
            meta=dict(meta if meta is not None else parts[0].meta),
        )

    def slice(self, start: int, stop: int) -> Trace:
        return Trace(**{k: getattr(self, k)[start:stop] for k in COLUMNS}, meta=self.meta)

    def chunks(self, chunk_records: int) -> Iterator[Trace]:
        for s in range(0, max(len(self), 1), chunk_records):
            if s >= len(self):
                break
            yield self.slice(s, s + chunk_records)

    def columns(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in COLUMNS}

    def equals(self, other: Trace) -> bool:
        return all(np.array_equal(getattr(self, k), getattr(other, k)) for k in COLUMNS)

    @property
    def instructions(self) -> int:
        return int(self.icount.sum(dtype=np.uint64))

    @property
    def accesses(self) -> int:
        """Memory accesses the records stand for (repeat counts of access records)."""
        return int(self.repeat[self.kind <= Kind.MODIFY].sum(dtype=np.uint64))
