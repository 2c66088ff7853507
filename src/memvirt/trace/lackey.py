"""Valgrind Lackey output (``--tool=lackey --trace-mem=yes [--trace-syscalls=yes]``).

Access lines (hex address without ``0x``, decimal size)::

    I  04005b6,5        instruction fetch  -> IFETCH, icount 1
     L ff000398,4       load               -> LOAD
     S ff000398,4       store              -> STORE
     M 00600aa0,4       load + store       -> MODIFY

are parsed by a compiled scanner over blocks of bytes (a few MB at a time, the partial last
line carried over).  Everything else is rare and handled in Python:

* ``==PID== ...`` banners: ignored, except that the PID becomes the pid of the following
  records (without banners the pid is 1, or the one given), and ``Process terminating with
  default action of signal`` gives an EXIT;
* ``--PID-- ...``, ``vex ...`` and ``valgrind: ...`` Valgrind messages and blank lines:
  ignored;
* ``SYSCALL[pid,tid](nr) name ( args ) ...`` lines (``--trace-syscalls=yes``), including
  the forms whose result comes later: ``--> [async] ...`` then ``SYSCALL[pid,tid](nr) ...
  [async] --> Success(..)``, and a note line (``clone(fork): process P created child C``)
  followed by a continuation line `` --> [pre-success] Success(0x..)``.  They become
  records as ``trace/syscalls.py`` says (shared with the mvtrace reader); an execve counts
  once the process image was replaced (the log of the old image ends with the execve line,
  or a banner follows it).

Any other line is malformed: ``TraceError`` names the file, the line number and the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numba import njit

from ..errors import TraceError
from .base import LocatingSource, register_reader
from .records import Kind, Trace
from .syscalls import EXECS, MARK_WAIT, SyscallModel

BLOCK_BYTES = 4 << 20
#: the longest line read (a valid Lackey line is at most a few hundred bytes)
MAX_LINE_BYTES = 64 << 10


_EXPECTED = ("expected 'I  ADDR,SIZE', ' L ADDR,SIZE', ' S ADDR,SIZE', ' M ADDR,SIZE' "
             "(hex address, decimal size), a SYSCALL line or a '==PID==' banner")


# --------------------------------------------------------------------------------------------
# the compiled scanner


_HEX_LUT = np.full(256, -1, dtype=np.int8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_LUT[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_LUT[_c] = 10 + _i
_KIND_LUT = np.full(256, -1, dtype=np.int8)
for _c, _k in ((b"I", Kind.IFETCH), (b"L", Kind.LOAD), (b"S", Kind.STORE), (b"M", Kind.MODIFY)):
    _KIND_LUT[_c[0]] = int(_k)


@njit(cache=True, nogil=True)
def _scan_block(buf, hex_lut, kind_lut, max_line):  # pragma: no cover - compiled
    """Parse Lackey access lines in ``buf`` (uint8, 1-D, contiguous).  A line longer than
    ``max_line`` bytes is never an access line (the caller reports it).

    Bounds safety: every read of ``buf`` is guarded by ``p < n`` (or ``p + 1 < n``); the
    look-up tables have 256 entries and are indexed by uint8 values; the output arrays have
    one slot per line and each pass of the outer loop (at most one per line) fills at most
    one slot.  Returns (kind, addr, size, n_records, other_start, other_end, other_line,
    other_pos, n_other, n_lines): the access records, and the lines that are not access
    lines (byte range, line index in the block, number of records before them)."""
    n = buf.shape[0]
    nlines = 0
    for i in range(n):
        if buf[i] == 10:
            nlines += 1
    if n > 0 and buf[n - 1] != 10:
        nlines += 1
    kinds = np.empty(nlines, np.uint8)
    addrs = np.empty(nlines, np.uint64)
    sizes = np.empty(nlines, np.uint64)
    o_start = np.empty(nlines, np.int64)
    o_end = np.empty(nlines, np.int64)
    o_line = np.empty(nlines, np.int64)
    o_pos = np.empty(nlines, np.int64)
    nrec = 0
    noth = 0
    line = 0
    p = 0
    four = np.uint64(4)
    ten = np.uint64(10)
    while p < n and line < nlines:
        start = p
        ok = False
        while p < n and buf[p] == 32:
            p += 1
        if p + 1 < n:
            k = kind_lut[buf[p]]
            if k >= 0 and buf[p + 1] == 32:
                p += 2
                while p < n and buf[p] == 32:
                    p += 1
                a = np.uint64(0)
                nd = 0
                while p < n:
                    d = hex_lut[buf[p]]
                    if d < 0:
                        break
                    a = (a << four) | np.uint64(d)
                    nd += 1
                    p += 1
                if 0 < nd <= 16 and p < n and buf[p] == 44:
                    p += 1
                    s = np.uint64(0)
                    nd = 0
                    while p < n:
                        c = buf[p]
                        if c < 48 or c > 57:
                            break
                        s = s * ten + np.uint64(c - 48)
                        nd += 1
                        p += 1
                    while p < n and (buf[p] == 32 or buf[p] == 13):
                        p += 1
                    if 0 < nd <= 19 and (p == n or buf[p] == 10) and p - start <= max_line:
                        ok = True
                        kinds[nrec] = k
                        addrs[nrec] = a
                        sizes[nrec] = s
                        nrec += 1
        while p < n and buf[p] != 10:
            p += 1
        if not ok:
            o_start[noth] = start
            o_end[noth] = p
            o_line[noth] = line
            o_pos[noth] = nrec
            noth += 1
        line += 1
        p += 1
    return kinds, addrs, sizes, nrec, o_start, o_end, o_line, o_pos, noth, line


def scan_block(buf: np.ndarray, max_line: int = MAX_LINE_BYTES):
    """Validated entry to the compiled scanner."""
    if not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or buf.ndim != 1:
        raise TypeError("scan_block needs a one-dimensional uint8 array")
    assert _HEX_LUT.shape == (256,) and _KIND_LUT.shape == (256,)
    return _scan_block(np.ascontiguousarray(buf), _HEX_LUT, _KIND_LUT, int(max_line))


# --------------------------------------------------------------------------------------------
# syscall lines

_SYSCALL_RE = re.compile(r"SYSCALL\[(\d{1,20}),(\d{1,20})\]\((\d{1,20})\)\s?(.*)$", re.ASCII)
_RESULT_RE = re.compile(r"(Success|Failure)\((0x[0-9a-fA-F]+|-?\d+)\)", re.ASCII)
_BANNER_RE = re.compile(r"==(\d+)==(.*)$", re.ASCII)
_ACCESS_LIKE_RE = re.compile(r"\s*[ILSM]\s", re.ASCII)
_NUM_RE = re.compile(r"([+-]?)(?:0[xX]([0-9a-fA-F]+)|([0-9]+))", re.ASCII)
_HEX_RE = re.compile(r"(?:0[xX])?([0-9a-fA-F]+)", re.ASCII)
_MAX_DIGITS = 40  # more is beyond every range read here (and int() limits digits)

U64_LIMIT = 1 << 64  # addresses and lengths are below; a range may end exactly there
PID_MAX = (1 << 63) - 1  # pids are int64 (and not negative)

#: the system call arguments that become record fields (addresses, lengths, flags): each
#: must be an unsigned 64-bit value; the other arguments read must fit 64 bits either way
_U64_ARGS = {"mmap": (1,), "mmap2": (1,), "munmap": (0, 1), "mremap": (0, 1, 2),
             "clone": (0,), "clone2": (0,)}
#: calls whose result is an address (must fit 64 bits) or a child's pid (must fit int64)
_ADDR_RESULT = ("mmap", "mmap2", "brk", "mremap")
_PID_RESULT = ("fork", "vfork", "clone", "clone2", "clone3")


class _ValueProblem(ValueError):
    """A number in a SYSCALL line that cannot become a record field (the message says why)."""


def _digits(text: str, digits: str) -> str:
    if len(digits) > _MAX_DIGITS:
        raise _ValueProblem(f"{text.strip()[:40]}... has more digits than a 64-bit value")
    return digits


def _num(text: str) -> int:
    """A decimal or 0x-hex integer, optionally signed."""
    m = _NUM_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"not a number: {text.strip()[:40]!r}")
    if m.group(2) is not None:
        v = int(_digits(text, m.group(2)), 16)
    else:
        v = int(_digits(text, m.group(3)), 10)
    return -v if m.group(1) == "-" else v


def _hexnum(text: str) -> int:
    m = _HEX_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"not a hex number: {text.strip()[:40]!r}")
    return int(_digits(text, m.group(1)), 16)


class _Args:
    """A call's argument texts, converted to int when read (clone's flags are printed in
    hex without 0x) and range-checked: an address, length or flags argument must be an
    unsigned 64-bit value, any other must fit 64 bits (signed or unsigned)."""

    def __init__(self, call: str, texts: list[str]):
        self.call = call
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> int:
        t = self.texts[i]
        v = _hexnum(t) if i == 0 and self.call in ("clone", "clone2") else _num(t)
        if i in _U64_ARGS.get(self.call, ()):
            if not 0 <= v < U64_LIMIT:
                raise _ValueProblem(f"argument {i + 1} of {self.call} ({t.strip()[:40]}) is "
                                    f"not an unsigned 64-bit value")
        elif not -(1 << 63) <= v < U64_LIMIT:
            raise _ValueProblem(f"argument {i + 1} of {self.call} ({t.strip()[:40]}) does not "
                                f"fit 64 bits")
        return v


def _check_ranges(call: str, args: _Args, value: int) -> None:
    """Raise ``_ValueProblem`` when a successful call's values would not fit the record fields
    (the model masks to 64 bits: a silently wrong number otherwise)."""
    if call in _ADDR_RESULT and not 0 <= value < U64_LIMIT:
        raise _ValueProblem(f"the result of {call} ({value:#x}) is beyond the 64-bit address "
                            f"space")
    if call in _PID_RESULT and value > PID_MAX:
        raise _ValueProblem(f"the child pid returned by {call} ({value}) does not fit int64")

    def span(addr: int, length: int, what: str) -> None:
        if addr + length > U64_LIMIT:
            raise _ValueProblem(f"{what} {addr:#x}+{length} ends beyond the 64-bit address "
                                f"space")

    if call in ("mmap", "mmap2"):
        span(value, args[1], "the mapping")
    elif call == "munmap":
        span(args[0], args[1], "the unmapped range")
    elif call == "mremap":
        old, old_size, new_size = args[0], args[1], args[2]
        span(old, max(old_size, new_size), "the remapped range")
        span(value, new_size, "the remapped range")


def _split_call(text: str) -> tuple[str, list[str], str | None]:
    """``name ( a, b ) tail`` -> (name, [a, b], tail after '-->' or None)."""
    head, sep, tail = text.partition("-->")
    paren = head.find("(")
    if paren < 0:
        return head.strip(), [], (tail.strip() if sep else None)
    name = head[:paren].strip()
    close = head.find(")", paren)
    inner = head[paren + 1:close if close >= 0 else len(head)].strip()
    args = [a.strip() for a in inner.split(",")] if inner else []
    return name, args, (tail.strip() if sep else None)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 100 else text[:100] + "...")


def _too_long(name: str, lineno: int, max_line: int) -> TraceError:
    return TraceError(f"{name}:{lineno}: line longer than {max_line} bytes (a Lackey line is "
                      f"at most a few hundred bytes: is this a Lackey log?)")


def _check_pid(name: str, pid) -> int:
    try:
        p = int(pid)
    except (TypeError, ValueError):
        raise TraceError(f"{name}: pid {pid!r} is not an integer") from None
    if not 0 <= p <= PID_MAX:
        raise TraceError(f"{name}: pid {p} is out of range (expected 0 to {PID_MAX})")
    return p


class LackeyParser:
    """Incremental Lackey parser: feed it blocks of complete lines, get ``Trace`` pieces.

    With ``track_lines`` each ``parse``/``end_of_file`` also leaves ``line_map``: the line
    number of every record of the piece, as two int64 arrays (record index, line) of
    breakpoints: record ``i`` comes from line ``line[j] + i - index[j]`` for the last ``j``
    with ``index[j] <= i`` (consecutive access lines are consecutive records, so there is one
    breakpoint per event and per run of access lines)."""

    def __init__(self, name: str = "<lackey>", pid: int | None = None, markers: bool = False,
                 track_lines: bool = False, max_line: int = 0):
        self.name = str(name)
        self.pid = 1 if pid is None else _check_pid(self.name, pid)
        self.pid_fixed = pid is not None
        self.markers = markers
        self.track_lines = track_lines
        self.max_line = int(max_line) or MAX_LINE_BYTES
        self.line_map: tuple[np.ndarray, np.ndarray] | None = None
        self.lines = 0  # lines consumed so far
        self.model = SyscallModel(markers)
        self._pending_async: dict[int, tuple[str, list[str], int]] = {}
        self._pending_inline: tuple[str, list[str], int] | None = None

    # -- the event list of one block: (record position, kind, addr, size, pid, line)
    def _ev(self, evs, pos, lineno, kind, addr=0, size=0):
        evs.append((pos, int(kind), int(addr) & 0xFFFFFFFFFFFFFFFF, int(size), self.pid, lineno))

    def _bad(self, lineno: int, text: str, why: str = _EXPECTED):
        raise TraceError(f"{self.name}:{lineno}: malformed Lackey line {_shown(text)} ({why})")

    def _resolve_inline_as_replaced(self, evs, pos):
        """A pending call without a result followed by another line: for execve this means
        the process image was replaced (the new image's banners follow)."""
        p = self._pending_inline
        self._pending_inline = None
        if p is not None and p[0].removeprefix("sys_") in EXECS:
            for kind, addr, size in self.model.replaced():
                self._ev(evs, pos, p[2], kind, addr, size)

    def _syscall_done(self, evs, pos, name: str, args: list[str], result: str, lineno: int):
        """A call (whose line is ``lineno``) finished with ``result``."""
        m = _RESULT_RE.search(result)
        if not m:
            return  # e.g. a result we cannot read: no event
        if m.group(1) != "Success":
            return
        call = name.removeprefix("sys_")
        a = _Args(call, args)
        try:
            value = _num(m.group(2))
            _check_ranges(call, a, value)
            records = self.model.finished(call, a, value)
        except _ValueProblem as e:
            shown = f"{name} ( {', '.join(args)} ) --> {m.group(0)}"
            raise TraceError(f"{self.name}:{lineno}: {e} (in {_shown(shown)})") from None
        except (IndexError, ValueError):
            self._bad(lineno, f"{name} ( {', '.join(args)} )",
                      f"cannot read the arguments of {name}")
        for kind, addr, size in records:
            self._ev(evs, pos, lineno, kind, addr, size)

    def _syscall_start(self, evs, pos, name: str, args: list[str], lineno: int):
        """Effects at the start of a call, whatever its result (exit, wait)."""
        call = name.removeprefix("sys_")
        try:
            records = self.model.started(call, _Args(call, args))
        except (IndexError, ValueError):
            return  # a wait whose arguments cannot be read: no marker
        for kind, addr, size in records:
            self._ev(evs, pos, lineno, kind, addr, size)

    def _syscall_line(self, evs, pos, text: str, lineno: int):
        while True:
            m = _SYSCALL_RE.match(text)
            if not m:
                self._bad(lineno, text)
            rest = m.group(4)
            # two processes writing to one log can glue lines together: split them
            glued = rest.find("SYSCALL[")
            if glued <= 0:
                self._syscall(evs, pos, int(m.group(2)), rest, lineno)
                return
            self._syscall(evs, pos, int(m.group(2)), rest[:glued].rstrip(), lineno)
            text = rest[glued:]

    def _syscall(self, evs, pos, tid: int, rest: str, lineno: int):
        """One SYSCALL record: ``rest`` is what follows ``SYSCALL[pid,tid](nr)``."""
        if rest.startswith("..."):
            # completion of an [async] call
            pending = self._pending_async.pop(tid, None)
            _, _, tail = rest.partition("-->")
            if pending is not None:
                self._syscall_done(evs, pos, pending[0], pending[1], tail, pending[2])
            return
        name, args, tail = _split_call(rest)
        self._syscall_start(evs, pos, name, args, lineno)
        if tail is None:
            # result on a continuation line (or never, for a successful execve)
            self._pending_inline = (name, args, lineno)
        elif tail.startswith("[async]"):
            self._pending_async[tid] = (name, args, lineno)
        else:
            self._syscall_done(evs, pos, name, args, tail, lineno)

    def _other_line(self, evs, pos, raw: bytes, lineno: int):
        if len(raw) > self.max_line:
            raise _too_long(self.name, lineno, self.max_line)
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        stripped = text.strip()
        if stripped.startswith("-->"):
            p = self._pending_inline
            self._pending_inline = None
            if p is not None:
                self._syscall_done(evs, pos, p[0], p[1], stripped[3:], p[2])
            # else: a child's first line (fork returning 0 in the child): nothing to do
            return
        if self._pending_inline is not None:
            self._resolve_inline_as_replaced(evs, pos)
        if not stripped:
            return
        if text.startswith("SYSCALL["):
            self._syscall_line(evs, pos, text, lineno)
            return
        if text.startswith("=="):
            m = _BANNER_RE.match(text)
            if not m:
                self._bad(lineno, text)
            if not self.pid_fixed:
                digits = m.group(1).lstrip("0") or "0"
                if len(digits) > 19 or int(digits) > PID_MAX:
                    raise TraceError(f"{self.name}:{lineno}: the pid of a '==PID==' banner "
                                     f"must be at most {PID_MAX} (in {_shown(text)})")
                self.pid = int(digits)
            if "Process terminating with default action of signal" in m.group(2):
                for kind, addr, size in self.model.killed():
                    self._ev(evs, pos, lineno, kind, addr, size)
            return
        if text.startswith("--") and text[2:3].isdigit():
            return  # --PID-- Valgrind message
        if text.startswith(("vex ", "valgrind:")):
            return  # messages of Valgrind's JIT (e.g. an unhandled instruction)
        if _ACCESS_LIKE_RE.match(text):
            self._bad(lineno, text, "expected ADDR,SIZE with a hex address of at most 16 "
                                    "digits and a decimal size")
        self._bad(lineno, text)

    def parse(self, data) -> Trace:
        """Parse complete lines (``bytes``/``bytearray``/uint8 array; a last line without a
        newline is taken as complete)."""
        buf = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
        (kind, addr, size, nrec, o_start, o_end, o_line, o_pos, noth,
         nlines) = scan_block(buf, self.max_line)
        kind, addr, size = kind[:nrec], addr[:nrec], size[:nrec]
        base_line = self.lines + 1
        pid0 = self.pid
        evs: list[tuple] = []
        pid_changes: list[tuple[int, int]] = []
        if noth:
            raw = buf.tobytes() if noth > 64 else None
            for j in range(noth):
                s, e = int(o_start[j]), int(o_end[j])
                line_bytes = raw[s:e] if raw is not None else buf[s:e].tobytes()
                before = self.pid
                self._other_line(evs, int(o_pos[j]), line_bytes, base_line + int(o_line[j]))
                if self.pid != before:
                    pid_changes.append((int(o_pos[j]), self.pid))
        self.lines += int(nlines)
        if self.track_lines:
            self.line_map = _line_map(nrec, o_pos[:noth], o_line[:noth], evs, base_line)
        pid = np.full(nrec, pid0, dtype=np.int64)
        for pos, p in pid_changes:
            pid[pos:] = p
        icount = (kind == 0).astype(np.uint32)
        if not evs:
            return Trace(kind=kind, addr=addr, size=size, pid=pid, icount=icount)
        pos = np.array([e[0] for e in evs], dtype=np.int64)
        return Trace(
            kind=np.insert(kind, pos, np.array([e[1] for e in evs], dtype=np.uint8)),
            addr=np.insert(addr, pos, np.array([e[2] for e in evs], dtype=np.uint64)),
            size=np.insert(size, pos, np.array([e[3] for e in evs], dtype=np.uint64)),
            pid=np.insert(pid, pos, np.array([e[4] for e in evs], dtype=np.int64)),
            icount=np.insert(icount, pos, np.zeros(len(evs), dtype=np.uint32)),
        )

    def end_of_file(self) -> Trace:
        """The log ended: an execve still waiting for its result replaced the process image."""
        evs: list[tuple] = []
        if self._pending_inline is not None:
            self._resolve_inline_as_replaced(evs, 0)
        if self.track_lines:
            self.line_map = (np.arange(len(evs), dtype=np.int64),
                             np.array([e[5] for e in evs], dtype=np.int64))
        if not evs:
            return Trace.empty()
        return Trace.from_records([e[1:3] + (0, e[4], 0) for e in evs])


def _line_map(nrec: int, o_pos: np.ndarray, o_line: np.ndarray, evs: list[tuple],
              base_line: int) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints (record index in the piece, line number) of a parsed block: access record
    ``k`` is on block line ``k + (other lines before it)``, and lands at ``k + (events
    inserted before it)``; event ``e`` lands at ``pos[e] + e`` and has its own line."""
    ev_pos = np.array([e[0] for e in evs], dtype=np.int64)
    ev_line = np.array([e[5] for e in evs], dtype=np.int64)
    o_pos = np.asarray(o_pos, dtype=np.int64)
    ks = np.unique(np.concatenate([np.zeros(1, np.int64), o_pos]))
    ks = ks[ks < nrec]
    acc_idx = ks + np.searchsorted(ev_pos, ks, side="right")
    acc_line = base_line + ks + np.searchsorted(o_pos, ks, side="right")
    idx = np.concatenate([acc_idx, ev_pos + np.arange(len(evs), dtype=np.int64)])
    line = np.concatenate([acc_line, ev_line])
    order = np.argsort(idx, kind="stable")
    return idx[order], line[order]


# --------------------------------------------------------------------------------------------
# the reader


def iter_lackey_blocks(f, block_bytes: int = BLOCK_BYTES, max_line: int = 0,
                       name: str = "<lackey>") -> Iterator[bytes]:
    """Yield blocks of complete lines from a binary file object (the partial last line is
    carried over to the next block; the file's last line may lack its newline).

    Reads ``block_bytes`` at a time; a line longer than ``max_line`` bytes (default
    ``MAX_LINE_BYTES``) raises ``TraceError`` naming ``name`` and the line number as soon as
    that much of it was read, so memory stays bounded by ``block_bytes + max_line`` whatever
    the input (a file without newlines, ``/dev/zero``)."""
    max_line = int(max_line) or MAX_LINE_BYTES
    block_bytes = max(int(block_bytes), 1)
    carry = b""
    line = 1  # the number of the first line not yielded yet
    while True:
        data = f.read(block_bytes)
        if not data:
            break
        cut = data.rfind(b"\n")
        if cut < 0:
            carry += data  # at most max_line + block_bytes: checked just below
            if len(carry) > max_line:
                raise _too_long(name, line, max_line)
            continue
        block = carry + data[:cut + 1] if carry else data[:cut + 1]
        carry = data[cut + 1:]
        line += block.count(b"\n")
        yield block
        if len(carry) > max_line:
            raise _too_long(name, line, max_line)
    if carry:
        yield carry


class LackeySource(LocatingSource):
    """A Lackey log file, parsed in streaming fashion.

    ``locate(i)`` says which line record ``i`` (0-based, counting the records ``chunks``
    yields) came from, for the records of the current and the previous chunk."""

    def __init__(self, path, pid: int | None = None, block_bytes: int = BLOCK_BYTES,
                 max_line: int = MAX_LINE_BYTES):
        self.path = Path(path)
        self.pid = None if pid is None else _check_pid(str(self.path), pid)
        self.block_bytes = int(block_bytes)
        self.max_line = int(max_line)
        try:
            self.total_bytes = self.path.stat().st_size
        except OSError as e:
            raise TraceError(f"{self.path}: cannot read: {e.strerror}") from None
        self.bytes_read = 0
        self.meta = {"source": "lackey", "input": self.path.name}
        # line maps of the pieces read: (first record, end record, breakpoint record
        # indices, breakpoint line numbers), dropped once two chunks further on
        self._maps: list[tuple[int, int, np.ndarray, np.ndarray]] = []
        self._produced = 0

    def progress(self) -> tuple[int, int]:
        return self.bytes_read, self.total_bytes

    def _piece(self, parser: LackeyParser, piece: Trace) -> Trace:
        if len(piece):
            idx, line = parser.line_map
            self._maps.append((self._produced, self._produced + len(piece),
                               idx + self._produced, line))
            self._produced += len(piece)
        return piece

    def _pieces(self) -> Iterator[Trace]:
        parser = LackeyParser(str(self.path), pid=self.pid, track_lines=True,
                              max_line=self.max_line)
        self.bytes_read = 0
        try:
            f = open(self.path, "rb")
        except OSError as e:
            raise TraceError(f"{self.path}: cannot read: {e.strerror}") from None
        with f:
            try:
                for block in iter_lackey_blocks(f, self.block_bytes, self.max_line,
                                                str(self.path)):
                    self.bytes_read += len(block)
                    yield self._piece(parser, parser.parse(block))
            except OSError as e:
                raise TraceError(f"{self.path}:{parser.lines + 1}: cannot read: "
                                 f"{e.strerror or e}") from None
        yield self._piece(parser, parser.end_of_file())

    def locate(self, record_index: int) -> str | None:
        """``FILE:LINE`` of record ``record_index`` (0-based, over all chunks), or None when
        it is not in the current or the previous chunk."""
        r = int(record_index)
        for first, end, idx, line in self._maps:
            if first <= r < end:
                j = int(np.searchsorted(idx, r, side="right")) - 1
                if j < 0:
                    return None
                return f"{self.path}:{int(line[j]) + r - int(idx[j])}"
        return None


def read_lackey(path, pid: int | None = None) -> LackeySource:
    return LackeySource(path, pid=pid)


def parse_lackey_text(text: str | bytes, pid: int | None = None, name: str = "<text>") -> Trace:
    """Parse a whole Lackey log held in memory (tests, small inputs)."""
    data = text.encode() if isinstance(text, str) else bytes(text)
    p = LackeyParser(name, pid=pid)
    return Trace.concat([p.parse(data), p.end_of_file()], meta={"source": "lackey"})


_DETECT_RE = re.compile(rb"^(?:I  ?| [LSM] )[0-9a-fA-F]{1,16},\d+\s*$|^SYSCALL\[\d+,\d+\]")


def _detect(path: Path) -> bool:
    """True when the first line that is not a ``==PID==``/``--PID--`` banner looks like a
    Lackey access or SYSCALL line."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    for line in head.split(b"\n")[:-1] or [head]:
        if not line.strip() or line.startswith(b"==") or line.startswith(b"--"):
            continue
        return bool(_DETECT_RE.match(line.rstrip(b"\r")))
    return False


register_reader("lackey", read_lackey, _detect,
                "Valgrind Lackey log (--trace-mem=yes [--trace-syscalls=yes])")

__all__ = ["MARK_WAIT", "LackeyParser", "LackeySource", "iter_lackey_blocks",
           "parse_lackey_text", "read_lackey", "scan_block"]
