"""Shared pieces of the synthetic generators: address layout, parameter checks, random
streams, and ``Builder``, which assembles a trace from large numpy blocks.

Generators never loop per record in Python: they build address arrays with numpy and hand
them to a ``Builder`` as *parts* (a block of accesses, or one event).  ``Builder.build``
allocates the five columns once and copies the parts in; LOAD/STORE kinds and per-record
instruction counts that a part does not set come from a random pattern drawn once.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import MemvirtError
from ..records import Kind, Trace

PAGE = 4096
MIB = 1 << 20
KIB = 1 << 10

# A 32-bit-style process layout (all below 2^31, so it fits a 2-level 32-bit guest).
CODE_BASE = 0x0040_0000  # program text (4 MiB)
HEAP_BASE = 0x0100_0000  # start of the brk heap (16 MiB)
MMAP_BASE = 0x1000_0000  # anonymous mmaps grow upward from here (256 MiB)
STACK_TOP = 0x7FFF_F000  # the stack grows down from here
DEFAULT_VA_BITS = 31
MAX_VA_BITS = 57

ACCESS_SIZE = 8  # bytes per data access

_PATTERN_LEN = 65521  # a prime, so the kind and icount patterns never line up with strides

LOAD = int(Kind.LOAD)
STORE = int(Kind.STORE)
MODIFY = int(Kind.MODIFY)
IFETCH = int(Kind.IFETCH)

# Parameters most generators share: name -> description (unit, default given per generator).
COMMON_DOCS = {
    "records": "approximate total number of records in the trace",
    "footprint_mib": "memory touched, in MiB (4 KiB pages = footprint_mib * 256)",
    "processes": "independent processes, each with its own copy of the workload "
    "(records and footprint split between them), time-sliced with SWITCH records",
    "slice_records": "records per time slice when processes > 1",
    "ipr": "instructions per data record (mean; each record carries floor or ceil of it "
    "in icount)",
    "store_frac": "fraction of ordinary data accesses that are stores (the rest are loads)",
    "seed": "seed of the PCG64 random generator (same seed -> identical trace)",
    "va_bits": "all addresses stay below 2^va_bits (31 fits a 2-level 32-bit guest; "
    "raise it for larger footprints)",
}


def doc(text: str, default) -> str:
    """A parameter description ending with its default."""
    return f"{text} (default {default!r})"


def common(gen_defaults: dict, *names: str) -> dict[str, str]:
    """The documented entries of common parameters ``names`` with this generator's defaults."""
    return {n: doc(COMMON_DOCS[n], gen_defaults[n]) for n in names}


class ParamCheck:
    """Range checks that raise ``MemvirtError`` naming the generator and parameter."""

    def __init__(self, gen: str):
        self.gen = gen

    def error(self, param: str, msg: str) -> MemvirtError:
        return MemvirtError(f"synth generator '{self.gen}': parameter '{param}' {msg}")

    def range(self, param: str, value, lo=None, hi=None):
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(param, f"must be finite, got {value!r}")
        if lo is not None and value < lo:
            raise self.error(param, f"must be >= {lo}, got {value!r}")
        if hi is not None and value > hi:
            raise self.error(param, f"must be <= {hi}, got {value!r}")
        return value

    def common(self, **kw) -> None:
        """Check whichever common parameters are given."""
        limits = {
            "records": (1, 1 << 34),
            "footprint_mib": (1 / 256, 1 << 24),
            "processes": (1, 4000),
            "slice_records": (1, None),
            "ipr": (1.0, 1e6),
            "store_frac": (0.0, 1.0),
            "seed": (0, None),
            "va_bits": (DEFAULT_VA_BITS, MAX_VA_BITS),
        }
        for k, v in kw.items():
            self.range(k, v, *limits[k])

    def fits(self, end: int, va_bits: int, what: str) -> None:
        """``end`` (exclusive) must not exceed 2^va_bits."""
        if end > (1 << va_bits):
            raise self.error(
                what,
                f"puts addresses up to {end:#x}, above 2^va_bits = {1 << va_bits:#x}; "
                "shrink it or raise va_bits",
            )


def pages_of(mib: float) -> int:
    """4 KiB pages in ``mib`` MiB, at least one."""
    return max(1, int(round(mib * MIB / PAGE)))


def rngs(seed: int, n: int) -> list[np.random.Generator]:
    """``n`` independent PCG64 generators derived from one seed."""
    return [np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(seed).spawn(n)]


def split(total: int, n: int) -> list[int]:
    """``total`` split into ``n`` near-equal integers."""
    q, r = divmod(int(total), n)
    return [q + (1 if i < r else 0) for i in range(n)]


def offsets(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random 8-byte-aligned offsets inside a page (uint64)."""
    r = rng.integers(0, PAGE // ACCESS_SIZE, n, dtype=np.uint16)
    return r.astype(np.uint64) << np.uint64(3)


class Builder:
    """Accumulates parts (blocks of accesses or single events) in timeline order."""

    __slots__ = ("parts", "n")

    def __init__(self) -> None:
        # part: (length, kind, addr, size, pid, icount); kind/icount None = default pattern,
        # kind/addr/icount a scalar or an array of the part's length.
        self.parts: list[tuple] = []
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def access(self, addr, pid: int, kind=None, icount=None, size: int = ACCESS_SIZE) -> None:
        """A block of data accesses (``addr`` an array)."""
        m = len(addr)
        if m:
            self.parts.append((m, kind, addr, size, pid, icount))
            self.n += m

    def event(self, kind: Kind, pid: int, addr: int = 0, size: int = 0) -> None:
        """One OS event record (icount 0)."""
        self.parts.append((1, int(kind), int(addr), int(size), int(pid), 0))
        self.n += 1

    def extend(self, other: Builder) -> None:
        self.parts.extend(other.parts)
        self.n += other.n

    def take(self, cursor: list, limit: int) -> Builder:
        """Move up to ``limit`` records from ``cursor`` = [part index, offset] into a new
        builder (parts are split with views, not copied); advances the cursor."""
        out = Builder()
        i, off = cursor
        while i < len(self.parts) and out.n < limit:
            m, k, a, s, p, ic = self.parts[i]
            want = min(limit - out.n, m - off)
            if off == 0 and want == m:
                out.parts.append(self.parts[i])
            else:
                sl = slice(off, off + want)
                out.parts.append((
                    want,
                    k[sl] if isinstance(k, np.ndarray) else k,
                    a[sl] if isinstance(a, np.ndarray) else a,
                    s,
                    p,
                    ic[sl] if isinstance(ic, np.ndarray) else ic,
                ))
            out.n += want
            off += want
            if off == m:
                i, off = i + 1, 0
        cursor[0], cursor[1] = i, off
        return out

    def build(self, rng: np.random.Generator, ipr: float, store_frac: float,
              meta: dict | None = None) -> Trace:
        """Allocate the columns once and copy every part in."""
        n = self.n
        kind = store_pattern(rng, n, store_frac)
        kind += np.uint8(LOAD)
        base = int(math.floor(ipr))
        frac = ipr - base
        icount = _pattern(rng, n, lambda r, m: (r.random(m) < frac).astype(np.uint32)
                          + np.uint32(base), np.uint32)
        addr = np.empty(n, np.uint64)
        size = np.full(n, ACCESS_SIZE, np.uint64)
        pid = np.empty(n, np.int64)
        ev_pos: list[int] = []
        ev_kind: list[int] = []
        ev_addr: list[int] = []
        ev_size: list[int] = []
        pos = 0
        run_start, run_pid = 0, None  # runs of one pid are filled at once
        for m, k, a, s, p, ic in self.parts:
            if p != run_pid:
                if pos > run_start:
                    pid[run_start:pos] = run_pid
                run_start, run_pid = pos, p
            if m == 1 and not isinstance(a, np.ndarray):
                ev_pos.append(pos)
                ev_kind.append(k)
                ev_addr.append(a)
                ev_size.append(s)
            else:
                e = pos + m
                addr[pos:e] = a
                if k is not None:
                    kind[pos:e] = k
                if ic is not None:
                    icount[pos:e] = ic
                if s != ACCESS_SIZE:
                    size[pos:e] = s
            pos += m
        if pos > run_start:
            pid[run_start:pos] = run_pid
        if ev_pos:
            idx = np.array(ev_pos, np.int64)
            kind[idx] = np.array(ev_kind, np.uint8)
            addr[idx] = np.array(ev_addr, np.uint64)
            size[idx] = np.array(ev_size, np.uint64)
            icount[idx] = 0
        return Trace(kind=kind, addr=addr, size=size, pid=pid, icount=icount,
                     meta=dict(meta or {}))


def store_pattern(rng: np.random.Generator, n: int, store_frac: float) -> np.ndarray:
    """uint8 0/1 per record, 1 with probability ``store_frac`` (a repeated random block)."""
    return _pattern(rng, n, lambda r, m: (r.random(m) < store_frac), np.uint8)


def _pattern(rng: np.random.Generator, n: int, make, dtype) -> np.ndarray:
    """A random block of ``_PATTERN_LEN`` values repeated to length ``n``."""
    block = make(rng, min(n, _PATTERN_LEN)).astype(dtype, copy=False)
    if n <= len(block):
        return block[:n].copy()
    return np.resize(block, n)


def interleave(parts: list[Builder], pids: list[int], slice_records: int) -> Builder:
    """Round-robin time slices of ``slice_records`` records from each process's builder,
    with a SWITCH record (pid = the process switched to) whenever the process changes."""
    if len(parts) == 1:
        return parts[0]
    out = Builder()
    cursors = [[0, 0] for _ in parts]
    current = pids[0]
    live = list(range(len(parts)))
    while live:
        still = []
        for i in live:
            chunk = parts[i].take(cursors[i], slice_records)
            if chunk.n:
                if pids[i] != current:
                    out.event(Kind.SWITCH, pids[i])
                    current = pids[i]
                out.extend(chunk)
            if cursors[i][0] < len(parts[i].parts):
                still.append(i)
        live = still
    return out
