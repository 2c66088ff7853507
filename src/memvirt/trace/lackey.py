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
from .base import DEFAULT_CHUNK, register_reader
from .records import Kind, Trace
from .syscalls import EXECS, MARK_WAIT, SyscallModel

BLOCK_BYTES = 4 << 20


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
def _scan_block(buf, hex_lut, kind_lut):  # pragma: no cover - compiled
    """Parse Lackey access lines in ``buf`` (uint8, 1-D, contiguous).

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
                    if 0 < nd <= 19 and (p == n or buf[p] == 10):
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


def scan_block(buf: np.ndarray):
    """Validated entry to the compiled scanner."""
    if not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or buf.ndim != 1:
        raise TypeError("scan_block needs a one-dimensional uint8 array")
    assert _HEX_LUT.shape == (256,) and _KIND_LUT.shape == (256,)
    return _scan_block(np.ascontiguousarray(buf), _HEX_LUT, _KIND_LUT)


# --------------------------------------------------------------------------------------------
# syscall lines

_SYSCALL_RE = re.compile(r"SYSCALL\[(\d+),(\d+)\]\((\d+)\)\s?(.*)$")
_RESULT_RE = re.compile(r"(Success|Failure)\((0x[0-9a-fA-F]+|-?\d+)\)")
_BANNER_RE = re.compile(r"==(\d+)==(.*)$")
_ACCESS_LIKE_RE = re.compile(r"\s*[ILSM]\s")


def _num(text: str) -> int:
    t = text.strip()
    neg = t.startswith("-")
    if neg:
        t = t[1:]
    v = int(t, 16) if t[:2] in ("0x", "0X") else int(t, 10)
    return -v if neg else v


def _hexnum(text: str) -> int:
    t = text.strip()
    return int(t[2:] if t[:2] in ("0x", "0X") else t, 16)


class _Args:
    """A call's argument texts, converted to int when read (clone's flags are printed in
    hex without 0x)."""

    def __init__(self, call: str, texts: list[str]):
        self.call = call
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> int:
        t = self.texts[i]
        return _hexnum(t) if i == 0 and self.call in ("clone", "clone2") else _num(t)


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


class LackeyParser:
    """Incremental Lackey parser: feed it blocks of complete lines, get ``Trace`` pieces."""

    def __init__(self, name: str = "<lackey>", pid: int | None = None, markers: bool = False):
        self.name = str(name)
        self.pid = 1 if pid is None else int(pid)
        self.pid_fixed = pid is not None
        self.markers = markers
        self.lines = 0  # lines consumed so far
        self.model = SyscallModel(markers)
        self._pending_async: dict[int, tuple[str, list[str]]] = {}
        self._pending_inline: tuple[str, list[str], int] | None = None

    # -- the event list of one block: (record position, kind, addr, size, pid)
    def _ev(self, evs, pos, kind, addr=0, size=0):
        evs.append((pos, int(kind), int(addr) & 0xFFFFFFFFFFFFFFFF, int(size), self.pid))

    def _bad(self, lineno: int, text: str, why: str = _EXPECTED):
        shown = text if len(text) <= 100 else text[:100] + "..."
        raise TraceError(f"{self.name}:{lineno}: malformed Lackey line {shown!r} ({why})")

    def _resolve_inline_as_replaced(self, evs, pos):
        """A pending call without a result followed by another line: for execve this means
        the process image was replaced (the new image's banners follow)."""
        p = self._pending_inline
        self._pending_inline = None
        if p is not None and p[0].removeprefix("sys_") in EXECS:
            for kind, addr, size in self.model.replaced():
                self._ev(evs, pos, kind, addr, size)

    def _syscall_done(self, evs, pos, name: str, args: list[str], result: str, lineno: int):
        m = _RESULT_RE.search(result)
        if not m:
            return  # e.g. a result we cannot read: no event
        if m.group(1) != "Success":
            return
        call = name.removeprefix("sys_")
        try:
            for kind, addr, size in self.model.finished(call, _Args(call, args),
                                                        _num(m.group(2))):
                self._ev(evs, pos, kind, addr, size)
        except (IndexError, ValueError):
            self._bad(lineno, f"{name} ( {', '.join(args)} )",
                      f"cannot read the arguments of {name}")

    def _syscall_start(self, evs, pos, name: str, args: list[str], lineno: int):
        """Effects at the start of a call, whatever its result (exit, wait)."""
        call = name.removeprefix("sys_")
        try:
            for kind, addr, size in self.model.started(call, _Args(call, args)):
                self._ev(evs, pos, kind, addr, size)
        except (IndexError, ValueError):
            return  # a wait whose arguments cannot be read: no marker

    def _syscall_line(self, evs, pos, text: str, lineno: int):
        m = _SYSCALL_RE.match(text)
        if not m:
            self._bad(lineno, text)
        tid = int(m.group(2))
        rest = m.group(4)
        # two processes writing to one log can glue lines together: split them
        glued = rest.find("SYSCALL[")
        if glued > 0:
            self._syscall_line(evs, pos, text[:m.start(4)] + rest[:glued].rstrip(), lineno)
            self._syscall_line(evs, pos, rest[glued:], lineno)
            return
        if rest.startswith("..."):
            # completion of an [async] call
            pending = self._pending_async.pop(tid, None)
            _, _, tail = rest.partition("-->")
            if pending is not None:
                self._syscall_done(evs, pos, pending[0], pending[1], tail, lineno)
            return
        name, args, tail = _split_call(rest)
        self._syscall_start(evs, pos, name, args, lineno)
        if tail is None:
            # result on a continuation line (or never, for a successful execve)
            self._pending_inline = (name, args, lineno)
        elif tail.startswith("[async]"):
            self._pending_async[tid] = (name, args)
        else:
            self._syscall_done(evs, pos, name, args, tail, lineno)

    def _other_line(self, evs, pos, raw: bytes, lineno: int):
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        stripped = text.strip()
        if stripped.startswith("-->"):
            p = self._pending_inline
            self._pending_inline = None
            if p is not None:
                self._syscall_done(evs, pos, p[0], p[1], stripped[3:], lineno)
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
                self.pid = int(m.group(1))
            if "Process terminating with default action of signal" in m.group(2):
                for kind, addr, size in self.model.killed():
                    self._ev(evs, pos, kind, addr, size)
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
         nlines) = scan_block(buf)
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
        if not evs:
            return Trace.empty()
        return Trace.from_records([e[1:3] + (0, e[4], 0) for e in evs])


# --------------------------------------------------------------------------------------------
# the reader


def iter_lackey_blocks(f, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """Yield blocks of complete lines from a binary file object (the partial last line is
    carried over to the next block; the file's last line may lack its newline)."""
    carry = b""
    while True:
        data = f.read(block_bytes)
        if not data:
            break
        if carry:
            data = carry + data
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            continue
        carry = data[cut + 1:]
        yield data[:cut + 1]
    if carry:
        yield carry


class LackeySource:
    """A Lackey log file, parsed in streaming fashion."""

    def __init__(self, path, pid: int | None = None, block_bytes: int = BLOCK_BYTES):
        self.path = Path(path)
        self.pid = pid
        self.block_bytes = int(block_bytes)
        try:
            self.total_bytes = self.path.stat().st_size
        except OSError as e:
            raise TraceError(f"{self.path}: cannot read: {e.strerror}") from None
        self.bytes_read = 0
        self.meta = {"source": "lackey", "input": self.path.name}

    def progress(self) -> tuple[int, int]:
        return self.bytes_read, self.total_bytes

    def _pieces(self) -> Iterator[Trace]:
        parser = LackeyParser(str(self.path), pid=self.pid)
        self.bytes_read = 0
        try:
            f = open(self.path, "rb")
        except OSError as e:
            raise TraceError(f"{self.path}: cannot read: {e.strerror}") from None
        with f:
            for block in iter_lackey_blocks(f, self.block_bytes):
                self.bytes_read += len(block)
                yield parser.parse(block)
        yield parser.end_of_file()

    def chunks(self, chunk_records: int = DEFAULT_CHUNK) -> Iterator[Trace]:
        from .parquet import rechunk

        yield from rechunk(self._pieces(), chunk_records, meta=self.meta)


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
