"""Decoder of the ``mvtrace`` capture stream (``docs/mvtrace-format.md``, format versions 1
and 2).

This is the only Python module that knows the binary format written by the ``mvtrace``
Valgrind tool (``trace/mvtrace/mvtrace.c``).  A stream is a 64-byte header followed by
records; :class:`StreamDecoder` reads it in pieces of any size (a file that is still
growing), keeps a record cut at the end of a piece for the next one, and returns each
piece's access records as numpy columns plus its events::

    dec = StreamDecoder("mvtrace.123.0")
    for data in pieces:            # a few MB each is fastest (>= 50 M records/s)
        block = dec.feed(data)     # block.kind/addr/size/repeat/lines, block.events

``lines`` (format 2) is the bitmap of the 64-byte lines of its page that a collapsed data
record's accesses touched, 0 when the stream gives none (the accesses touched only the
first access's lines; always 0 in version 1 and collapse=none streams, whose ``lines`` is a
shared read-only zero column).

``events`` is a list of ``(pos, tag, values)``: ``pos`` is the number of access records of
the block before the event, ``tag`` one of the ``EV_*`` constants, ``values`` the event's
fields in format order as a tuple of ints (signed fields as negative ints), except for
EXEC_PATH whose ``values`` is the path as ``bytes``:

==============  ======================================================================
tag             values
==============  ======================================================================
EV_SYSCALL      (sysno, nargs, arg0, ..., result)
EV_SYSCALL_PRE  (sysno, nargs, arg0, ...)
EV_THREAD       (tid,)
EV_MAP          (start, length, prot, kind)
EV_EXEC_PATH    b"path"
EV_SIGNAL       (signo,)
EV_END          (exit_code, instructions, loads, stores, modifies, records)
==============  ======================================================================
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

from ..errors import TraceError
from .records import zero_lines

FORMAT_VERSION = 2  # what the tool writes
READ_VERSIONS = (1, 2)  # what this decoder reads (2 added the lines field)
MAGIC = b"MVTRACE\0"
HEADER_SIZE = 64

EV_SYSCALL = 0x40
EV_SYSCALL_PRE = 0x41
EV_THREAD = 0x42
EV_MAP = 0x43
EV_EXEC_PATH = 0x44
EV_SIGNAL = 0x45
EV_END = 0x46
EVENT_NAMES = {EV_SYSCALL: "SYSCALL", EV_SYSCALL_PRE: "SYSCALL_PRE", EV_THREAD: "THREAD",
               EV_MAP: "MAP", EV_EXEC_PATH: "EXEC_PATH", EV_SIGNAL: "SIGNAL", EV_END: "END"}

COLLAPSE_NONE = 0
COLLAPSE_PAGE = 1
FLAG_EXEC = 1

MAX_EXEC_PATH = 255
MAX_SYSCALL_ARGS = 8

_HEADER = struct.Struct("<8sIIIIIIII24x")


@dataclass(frozen=True)
class StreamHeader:
    pid: int
    ppid: int
    seq: int
    collapse: int
    sync: int
    flags: int
    version: int = FORMAT_VERSION

    @property
    def exec_image(self) -> bool:
        """This image was started by ``execve`` (flags bit 0)."""
        return bool(self.flags & FLAG_EXEC)


def parse_header(data: bytes, name: str) -> StreamHeader:
    """The 64-byte header at the start of ``data`` (``name`` is used in errors)."""
    if len(data) < HEADER_SIZE:
        raise TraceError(f"{name}: not an mvtrace stream: the header needs {HEADER_SIZE} "
                         f"bytes, the file has {len(data)}")
    magic, version, size, pid, ppid, seq, collapse, sync, flags = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise TraceError(f"{name}: not an mvtrace stream (magic {magic!r}, expected {MAGIC!r})")
    if version not in READ_VERSIONS:
        raise TraceError(f"{name}: mvtrace format version {version} is not supported "
                         f"(this memvirt reads versions "
                         f"{', '.join(str(v) for v in READ_VERSIONS)})")
    if size != HEADER_SIZE:
        raise TraceError(f"{name}: bad mvtrace header size {size} (expected {HEADER_SIZE})")
    if collapse not in (COLLAPSE_NONE, COLLAPSE_PAGE):
        raise TraceError(f"{name}: bad mvtrace collapse mode {collapse} (expected 0 or 1)")
    if sync < 1:
        raise TraceError(f"{name}: bad mvtrace sync interval {sync} (expected >= 1)")
    return StreamHeader(pid, ppid, seq, collapse, sync, flags, version)


# --------------------------------------------------------------------------------------------
# the compiled block decoder

_OK, _CUT, _FULL = 0, 1, 9
_ERR_TAG, _ERR_VARINT, _ERR_REPEAT, _ERR_RESERVED, _ERR_SIZE, _ERR_NARGS, _ERR_PATH = range(2, 9)
_ERR_LINES_FETCH, _ERR_LINES = 10, 11
_ERRORS = {
    _ERR_LINES_FETCH: "lines field (tag bit 6) on an instruction fetch record",
    _ERR_LINES: "lines field of 0 or naming a line beyond the page",
    _ERR_TAG: "unknown record tag",
    _ERR_VARINT: "varint longer than 10 bytes (or above 2**64)",
    _ERR_REPEAT: "access record with repeat 0",
    _ERR_RESERVED: "access record tag with reserved bits 2-3 set",
    _ERR_SIZE: "access record of size 0",
    _ERR_NARGS: f"SYSCALL record with more than {MAX_SYSCALL_ARGS} arguments",
    _ERR_PATH: f"EXEC_PATH longer than {MAX_EXEC_PATH} bytes",
}


@njit(cache=True, nogil=True)
def _uv(buf, p, n):  # pragma: no cover - compiled
    """Unsigned LEB128 at ``buf[p]``: (value, next position, status)."""
    v = np.uint64(0)
    shift = np.uint64(0)
    for i in range(10):
        if p >= n:
            return v, p, _CUT
        b = buf[p]
        p += 1
        if i == 9 and b > 1:
            return v, p, _ERR_VARINT
        v |= np.uint64(b & 0x7F) << shift
        if b < 0x80:
            return v, p, _OK
        shift += np.uint64(7)
    return v, p, _ERR_VARINT


@njit(cache=True, nogil=True)
def _decode(buf, pos, state, with_lines, kinds, addrs, sizes, reps, lines, nrec, ev_pos, ev_tag,
            ev_start, ev_count, nev, vals, nval):  # pragma: no cover - compiled
    """Decode the records of ``buf`` (uint8, 1-D) from ``pos`` into the output arrays,
    appending after their first ``nrec`` / ``nev`` / ``nval`` entries.

    Tags: below 0x40 an access record; 0x40-0x4F an event; with ``with_lines`` (format 2),
    0x50-0x7F an access record with a lines field (tag bit 6; bit 4, repeat, is always set
    then, which keeps these apart from the events); anything else is an unknown tag.

    ``state`` (uint64[4]: previous address of the fetch and data streams, previous size of
    each) is updated for every complete access record.  Bounds safety: every read of ``buf``
    is guarded by ``p < n`` (in ``_uv``) or by an explicit check (EXEC_PATH bytes); before
    each record the outputs are checked for room (an access record fills one slot, an event
    one event slot and at most 16 values), and when one is full the decoder stops with
    status ``_FULL`` so the caller can grow it and call again.  A record cut by the end of
    ``buf`` is not consumed (status ``_CUT``).  Access records cannot fill their outputs if
    these have ``(len(buf) - pos) // 2`` free slots: a record has at least two bytes.

    Returns (nrec, nev, nval, consumed, status); on an error, consumed is the offset of the
    bad record."""
    n = buf.shape[0]
    rcap = kinds.shape[0]
    ecap = ev_pos.shape[0]
    vcap = vals.shape[0]
    status = _OK
    p = pos
    start = pos
    one = np.uint64(1)
    low7 = np.uint64(0x7F)
    seven = np.uint64(7)
    # the previous address and size of each stream, in locals (stored back at the end)
    pa0, pa1, ps0, ps1 = state[0], state[1], state[2], state[3]
    while p < n:
        start = p
        tag = np.int64(buf[p])
        p += 1
        if tag < 0x40 or (with_lines and tag < 0x80 and (tag & 0x10) != 0):
            # The varints of an access record are read by loops written out in place:
            # numba compiles a helper returning (value, position, status) several times
            # slower, and this loop is the decoder's whole cost.
            if nrec >= rcap:
                status = _FULL
                break
            if tag & 0x0C:
                status = _ERR_RESERVED
                break
            zz = np.uint64(0)
            sh = np.uint64(0)
            q = p
            while True:
                if p >= n:
                    status = _CUT
                    break
                b = np.uint64(buf[p])
                p += 1
                if p - q == 10 and b > one:
                    status = _ERR_VARINT
                    break
                zz |= (b & low7) << sh
                if b < 0x80:
                    break
                if p - q == 10:
                    status = _ERR_VARINT
                    break
                sh += seven
            if status != _OK:
                break
            if tag & 0x20:
                size = ps0 if (tag & 3) == 0 else ps1
            else:
                size = np.uint64(0)
                sh = np.uint64(0)
                q = p
                while True:
                    if p >= n:
                        status = _CUT
                        break
                    b = np.uint64(buf[p])
                    p += 1
                    if p - q == 10 and b > one:
                        status = _ERR_VARINT
                        break
                    size |= (b & low7) << sh
                    if b < 0x80:
                        break
                    if p - q == 10:
                        status = _ERR_VARINT
                        break
                    sh += seven
                if status != _OK:
                    break
            rep = one
            if tag & 0x10:
                rep = np.uint64(0)
                sh = np.uint64(0)
                q = p
                while True:
                    if p >= n:
                        status = _CUT
                        break
                    b = np.uint64(buf[p])
                    p += 1
                    if p - q == 10 and b > one:
                        status = _ERR_VARINT
                        break
                    rep |= (b & low7) << sh
                    if b < 0x80:
                        break
                    if p - q == 10:
                        status = _ERR_VARINT
                        break
                    sh += seven
                if status != _OK:
                    break
                if rep == np.uint64(0) or rep > np.uint64(0xFFFFFFFF):
                    status = _ERR_REPEAT
                    break
            ln = np.uint64(0)
            if tag & 0x40:
                if (tag & 3) == 0:
                    status = _ERR_LINES_FETCH
                    break
                sh = np.uint64(0)
                q = p
                while True:
                    if p >= n:
                        status = _CUT
                        break
                    b = np.uint64(buf[p])
                    p += 1
                    if p - q == 10 and b > one:
                        status = _ERR_VARINT
                        break
                    ln |= (b & low7) << sh
                    if b < 0x80:
                        break
                    if p - q == 10:
                        status = _ERR_VARINT
                        break
                    sh += seven
                if status != _OK:
                    break
            if size == np.uint64(0):
                status = _ERR_SIZE
                break
            delta = (zz >> one) ^ (np.uint64(0) - (zz & one))
            if (tag & 3) == 0:
                a = pa0 + delta
                pa0 = a
                ps0 = size
            else:
                a = pa1 + delta
                if tag & 0x40:
                    # The field: the other lines of the page, bit k = the k-th line in order
                    # of distance from the first access's lines f..l (l+1, f-1, l+2, f-2 ...,
                    # skipping lines beyond the page); the column: the whole bitmap.
                    off = a & np.uint64(0xFFF)
                    end = np.uint64(0xFFF) if size > np.uint64(0x1000) - off \
                        else off + size - one
                    f = np.int64(off >> np.uint64(6))
                    lst = np.int64(end >> np.uint64(6))
                    above = 63 - lst
                    below = f
                    if ln == np.uint64(0) or (ln >> np.uint64(above + below)) != np.uint64(0):
                        status = _ERR_LINES
                        break
                    m = min(above, below)
                    full = ((np.uint64(2) << np.uint64(lst - f)) - one) << np.uint64(f)
                    while ln != np.uint64(0):  # once per line named
                        k = np.int64(trailing_zeros(ln))
                        ln &= ln - one
                        if k < 2 * m:  # both sides: l+1, f-1, l+2, f-2 ...
                            d = k // 2 + 1
                            up = k % 2 == 0
                        else:  # then only the side that has more lines
                            d = k - m + 1
                            up = above > below
                        full |= one << np.uint64(lst + d if up else f - d)
                    ln = full
                pa1 = a
                ps1 = size
            kinds[nrec] = tag & 3
            addrs[nrec] = a
            sizes[nrec] = size
            reps[nrec] = rep
            lines[nrec] = ln
            nrec += 1
            continue
        # an event: its fields go to vals (raw varints; EXEC_PATH: byte offset and length)
        if tag == 0x40 or tag == 0x41:
            nfix = 2
        elif tag == 0x42 or tag == 0x45 or tag == 0x44:
            nfix = 1
        elif tag == 0x43:
            nfix = 4
        elif tag == 0x46:
            nfix = 6
        else:
            status = _ERR_TAG
            break
        if nev >= ecap or nval + 16 > vcap:
            status = _FULL
            break
        v0 = nval
        for _ in range(nfix):
            v, p, st = _uv(buf, p, n)
            if st != _OK:
                status = st
                break
            vals[nval] = v
            nval += 1
        if status != _OK:
            nval = v0
            break
        if tag == 0x40 or tag == 0x41:
            nargs = vals[v0 + 1]
            if nargs > np.uint64(MAX_SYSCALL_ARGS):
                status = _ERR_NARGS
                break
            more = int(nargs) + (1 if tag == 0x40 else 0)
            for _ in range(more):
                v, p, st = _uv(buf, p, n)
                if st != _OK:
                    status = st
                    break
                vals[nval] = v
                nval += 1
            if status != _OK:
                nval = v0
                break
        elif tag == 0x44:
            ln = vals[v0]
            if ln > np.uint64(MAX_EXEC_PATH):
                status = _ERR_PATH
                break
            if p + int(ln) > n:
                status = _CUT
                nval = v0
                break
            vals[v0] = np.uint64(p)
            vals[nval] = ln
            nval += 1
            p += int(ln)
        ev_pos[nev] = nrec
        ev_tag[nev] = tag
        ev_start[nev] = v0
        ev_count[nev] = nval - v0
        nev += 1
    if status == _OK:
        start = p
    state[0], state[1], state[2], state[3] = pa0, pa1, ps0, ps1
    return nrec, nev, nval, start, status


# --------------------------------------------------------------------------------------------
# the Python side


def _signed(v: int) -> int:
    """Zigzag-decode a raw varint value."""
    return (v >> 1) ^ -(v & 1)


@dataclass
class Block:
    """The access records and events decoded from one piece of a stream."""

    kind: np.ndarray    # uint8: 0 IFETCH, 1 LOAD, 2 STORE, 3 MODIFY
    addr: np.ndarray    # uint64
    size: np.ndarray    # uint64
    repeat: np.ndarray  # uint32
    events: list = field(default_factory=list)  # (pos, tag, values)
    lines: np.ndarray | None = None  # uint64: lines bitmaps, 0 when absent (None: all 0)

    def __post_init__(self) -> None:
        if self.lines is None:
            self.lines = np.zeros(len(self.kind), np.uint64)

    def __len__(self) -> int:
        return len(self.kind)


def _empty_block() -> Block:
    return Block(np.zeros(0, np.uint8), np.zeros(0, np.uint64), np.zeros(0, np.uint64),
                 np.zeros(0, np.uint32), [])


class _Scratch(threading.local):
    """Per-thread output arrays of the compiled decoder, reused from feed to feed: fresh
    arrays would be page-faulted in on every call, which costs more than the decoding."""

    RECORDS = 1 << 20

    def __init__(self):
        n = self.RECORDS
        self.rec = (np.empty(n, np.uint8), np.empty(n, np.uint64), np.empty(n, np.uint64),
                    np.empty(n, np.uint32), np.empty(n, np.uint64))
        self.grow_events(64)

    def grow_events(self, n: int) -> None:
        old = getattr(self, "ev", None)
        ev = (np.empty(n, np.int64), np.empty(n, np.uint8), np.empty(n, np.int64),
              np.empty(n, np.int64))
        vals = np.empty(16 * n, np.uint64)
        if old is not None:
            for a, b in zip(ev, old):
                a[:len(b)] = b
            vals[:len(self.vals)] = self.vals
        self.ev, self.vals = ev, vals


_SCRATCH = _Scratch()


class StreamDecoder:
    """Incremental decoder of one stream file.

    ``feed`` takes the next bytes of the file (any split); the header is read from the first
    64 bytes unless ``header=False`` (bare records, for tests).  ``header`` is the parsed
    header (None until 64 bytes arrived), ``offset`` the file offset decoded up to,
    ``pending`` the bytes of a cut record kept for the next feed, ``records`` the access
    records decoded so far, ``ended`` whether the END record was seen."""

    def __init__(self, name: str = "<mvtrace>", header: bool = True):
        self.name = str(name)
        self.header: StreamHeader | None = None
        self._need_header = header
        self._with_lines = True  # bare records (header=False): the current format
        self._state = np.zeros(4, np.uint64)
        self._carry = b""
        self.offset = 0
        self.records = 0
        self.ended = False

    @property
    def pending(self) -> int:
        return len(self._carry)

    @property
    def consumed(self) -> int:
        """Bytes of the file decoded so far (= ``offset``; ``pending`` bytes wait)."""
        return self.offset

    def _copy(self, rec, nrec: int) -> tuple:
        out = tuple(a[:nrec].copy() for a in rec[:4])
        return (*out, rec[4][:nrec].copy() if self._with_lines else zero_lines(nrec))

    def feed(self, data) -> Block:
        if isinstance(data, np.ndarray):
            if data.dtype != np.uint8 or data.ndim != 1:
                raise TypeError("StreamDecoder.feed needs bytes or a 1-D uint8 array")
            if self._carry:
                data = np.concatenate([np.frombuffer(self._carry, np.uint8), data])
            buf = np.ascontiguousarray(data)
        else:
            if self._carry:
                data = self._carry + bytes(data)
            buf = np.frombuffer(data, np.uint8)
        self._carry = b""
        pos = 0
        if self._need_header:
            if len(buf) < HEADER_SIZE:
                self._carry = buf.tobytes()
                return _empty_block()
            self.header = parse_header(buf[:HEADER_SIZE].tobytes(), self.name)
            # lines fields: format 2, collapsed streams only (none elsewhere: their tags are
            # unknown tags there, and their lines column is a shared zero column)
            self._with_lines = (self.header.version >= 2
                                and self.header.collapse == COLLAPSE_PAGE)
            self._need_header = False
            pos = HEADER_SIZE
            self.offset += HEADER_SIZE
        sc = _SCRATCH
        pieces = []
        nrec = nev = nval = 0
        base = fixed = 0  # records in earlier pieces; events whose pos includes them
        while True:
            nrec, nev, nval, stop, status = _decode(buf, pos, self._state, self._with_lines,
                                                    *sc.rec, nrec, *sc.ev, nev, sc.vals, nval)
            self.offset += stop - pos
            pos = stop
            if status == _FULL:
                if nrec == len(sc.rec[0]):  # records full: keep them, go on
                    pieces.append(self._copy(sc.rec, nrec))
                    sc.ev[0][fixed:nev] += base
                    base += nrec
                    fixed = nev
                    nrec = 0
                else:
                    sc.grow_events(2 * len(sc.ev[0]))
                continue
            break
        sc.ev[0][fixed:nev] += base
        if status >= 2:
            raise TraceError(f"{self.name}: byte {self.offset}: malformed mvtrace stream: "
                             f"{_ERRORS[status]} (tag 0x{int(buf[pos]):02x})")
        if pos < len(buf):
            self._carry = buf[pos:].tobytes()
        pieces.append(self._copy(sc.rec, nrec))
        if len(pieces) == 1:
            kind, addr, size, rep, lines = pieces[0]
        else:
            kind, addr, size, rep, lines = (np.concatenate(c) for c in zip(*pieces))
            if not self._with_lines:
                lines = zero_lines(len(kind))
        self.records += len(kind)
        events = []
        ev_pos, ev_tag, ev_start, ev_count = sc.ev
        for i in range(nev):
            tag = int(ev_tag[i])
            v = sc.vals[ev_start[i]:ev_start[i] + ev_count[i]].tolist()
            if tag == EV_EXEC_PATH:
                values = buf[v[0]:v[0] + v[1]].tobytes()
            elif tag in (EV_SYSCALL, EV_SYSCALL_PRE):
                values = (v[0], v[1], *(_signed(x) for x in v[2:]))
            else:
                values = tuple(v)
            if tag == EV_END:
                self.ended = True
            events.append((int(ev_pos[i]), tag, values))
        return Block(kind, addr, size, rep, events, lines)


def decode_file(path, piece: int = 4 << 20) -> tuple[StreamHeader, Block]:
    """A whole stream file at once (tests, tools): header and one Block of everything."""
    from pathlib import Path

    path = Path(path)
    dec = StreamDecoder(str(path))
    blocks = []
    with open(path, "rb") as f:
        while True:
            data = f.read(piece)
            if not data:
                break
            blocks.append(dec.feed(data))
    if dec.header is None:
        parse_header(dec._carry, str(path))  # raises: too short
    return dec.header, concat_blocks(blocks)


def concat_blocks(blocks: list[Block]) -> Block:
    """One Block of several (event positions shifted)."""
    events = []
    base = 0
    for b in blocks:
        events.extend((base + pos, tag, values) for pos, tag, values in b.events)
        base += len(b)
    if not blocks:
        return _empty_block()
    return Block(np.concatenate([b.kind for b in blocks]),
                 np.concatenate([b.addr for b in blocks]),
                 np.concatenate([b.size for b in blocks]),
                 np.concatenate([b.repeat for b in blocks]), events,
                 np.concatenate([b.lines for b in blocks]))


__all__ = ["EV_END", "EV_EXEC_PATH", "EV_MAP", "EV_SIGNAL", "EV_SYSCALL", "EV_SYSCALL_PRE",
           "EV_THREAD", "FORMAT_VERSION", "READ_VERSIONS", "Block", "StreamDecoder", "StreamHeader",
           "concat_blocks", "decode_file", "parse_header"]
