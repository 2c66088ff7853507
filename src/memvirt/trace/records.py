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
lines      uint64    LOAD/STORE/MODIFY: the bitmap of the 64-byte lines of the
                     record's 4 KiB page that its accesses touched (bit i = line
                     i, ``(addr >> 6) & 63``; the first access's lines included;
                     a page-crossing access: the lines of its first page only),
                     or 0: "not recorded", the accesses touched only the first
                     access's lines (always so for a record of one access, so
                     Lackey, ChampSim, synthetic and full traces are all 0).
                     A cache model needs this set of lines (not their order).
                     IFETCH and events: 0.  Optional when building a ``Trace``
                     (default: a shared read-only column of zeros).
=========  ========  ===========================================================

A process exists from its first record (processes running when the trace
starts) or from the FORK that creates it; after EXIT it has no more records.
Whenever the record's pid differs from the running one, the guest loads CR3
(a context switch); SWITCH records make a switch explicit.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
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
    "lines": np.dtype(np.uint64),
}

LINE_SHIFT = 6  # 64-byte lines: bit ``(addr >> LINE_SHIFT) & 63`` of ``lines``

_zero_lines = np.zeros(1 << 16, np.uint64)
_zero_lines.setflags(write=False)
_zero_buffers: weakref.WeakValueDictionary = weakref.WeakValueDictionary(
    {id(_zero_lines): _zero_lines})


def zero_lines(n: int) -> np.ndarray:
    """A read-only uint64 column of ``n`` zeros: a view of one shared buffer (grown when
    needed), so a ``Trace`` without bitmaps costs no allocation.  Being read-only, it can
    never be changed by mistake through one trace (writing raises ``ValueError``)."""
    global _zero_lines
    buf = _zero_lines
    if n > len(buf):
        buf = np.zeros(max(n, 2 * len(buf)), np.uint64)
        buf.setflags(write=False)
        _zero_buffers[id(buf)] = buf
        _zero_lines = buf  # (threads racing here each make a buffer: both are zeros)
    return buf[:n]


def is_zero_lines(col: np.ndarray) -> bool:
    """``col`` is (a view of) a shared zero column of ``zero_lines``: all zeros, without
    looking at its values."""
    base = col.base
    return base is not None and _zero_buffers.get(id(base)) is base


def line_bits(addr: int, size: int) -> int:
    """The ``lines`` bits of one access: the 64-byte lines of its 4 KiB page that it
    touches (an access that crosses into the next page: those of its first page)."""
    off = addr & 0xFFF
    first = off >> LINE_SHIFT
    last = min(off + max(size, 1) - 1, 0xFFF) >> LINE_SHIFT
    return ((2 << (last - first)) - 1) << first


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
    lines: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.repeat is None:
            self.repeat = np.ones(len(np.asarray(self.kind)), np.uint32)
        if self.lines is None:
            self.lines = zero_lines(len(np.asarray(self.kind)))
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
        """Build from an iterable of (kind, addr, size, pid, icount[, repeat[, lines]])
        tuples (tests, examples); repeat defaults to 1, lines to 0."""
        rows = [(*r, 1, 0) if len(r) == 5 else (*r, 0) if len(r) == 6 else tuple(r)
                for r in records]
        if not rows:
            return cls.empty(meta)
        cols = list(zip(*rows))
        if len(cols) != 7 or any(len(r) != 7 for r in rows):
            raise ValueError("each record must be (kind, addr, size, pid, icount[, repeat"
                             "[, lines]])")
        return cls(
            kind=np.array(cols[0], np.uint8),
            addr=np.array(cols[1], np.uint64),
            size=np.array(cols[2], np.uint64),
            pid=np.array(cols[3], np.int64),
            icount=np.array(cols[4], np.uint32),
            repeat=np.array(cols[5], np.uint32),
            lines=np.array(cols[6], np.uint64),
            meta=dict(meta or {}),
        )

    @classmethod
    def concat(cls, parts: list[Trace], meta: dict | None = None) -> Trace:
        parts = [p for p in parts]
        if not parts:
            return cls.empty(meta)
        cols = {k: np.concatenate([getattr(p, k) for p in parts])
                for k in COLUMNS if k != "lines"}
        if not all(is_zero_lines(p.lines) for p in parts):
            cols["lines"] = np.concatenate([p.lines for p in parts])
        return cls(**cols, meta=dict(meta if meta is not None else parts[0].meta))

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


def rechunk(pieces: Iterable[Trace], chunk_records: int,
            meta: dict | None = None) -> Iterator[Trace]:
    """Regroup a stream of ``Trace`` pieces into chunks of exactly ``chunk_records``
    (the last one may be shorter).  Memory stays within about two chunks."""
    if chunk_records <= 0:
        raise ValueError("chunk_records must be positive")
    held: list[Trace] = []
    n_held = 0
    for piece in pieces:
        if not len(piece):
            continue
        held.append(piece)
        n_held += len(piece)
        if n_held < chunk_records:
            continue
        whole = held[0] if len(held) == 1 else Trace.concat(held, meta=meta)
        start = 0
        while n_held - start >= chunk_records:
            out = whole.slice(start, start + chunk_records)
            if meta is not None:
                out.meta = meta
            yield out
            start += chunk_records
        rest = whole.slice(start, n_held)
        held = [rest] if len(rest) else []
        n_held = len(rest)
    if n_held:
        out = held[0] if len(held) == 1 else Trace.concat(held, meta=meta)
        if meta is not None:
            out.meta = meta
        yield out
