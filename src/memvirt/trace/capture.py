"""Capture a real program's memory accesses with Valgrind Lackey into a memvirt trace.

``capture(cmd, out)`` runs::

    valgrind --tool=lackey --trace-mem=yes --trace-syscalls=yes --trace-children=yes \\
             --log-file=DIR/lackey.%p.%n CMD...

Valgrind writes one log per process (``%p`` is the pid; a forked child reopens its own
log).  A watcher thread renames every new log out of the way within milliseconds of its
creation, so that a process that calls ``execve`` (whose new Valgrind reopens the *same*
name and truncates it) starts a fresh file and nothing is lost; the pid's renamed files are
read in order, the old image's log ending with its ``execve`` line.  Logs are read as they
grow (tail -f style), converted to records block by block, and the consumed part of each
file is released (hole-punched, then deleted), so neither the text nor the records are ever
held whole.

The per-process streams are merged into one guest timeline by a one-vCPU scheduler model
(``Scheduler``), independent of how the real processes were interleaved:

* round robin, a time slice of ``slice_instructions`` instructions (default 1,000,000,
  about a 1 ms tick of a 1 GHz guest); a process is preempted before the first instruction
  fetch past its slice, so an instruction's data accesses stay with it;
* a forked child becomes runnable at its FORK (which is in the parent's stream) and joins
  the end of the run queue; the parent goes on with its slice;
* a process that enters ``wait4``/``waitid`` for a child that has not exited yet (in the
  model) blocks until that child (or, for "any child", one of them) exits; a child that
  exited earlier is reaped at once; WNOHANG never blocks;
* EXIT ends a process; a stream that ends without one (killed by a signal Valgrind could
  not see) gets an EXIT appended;
* a SWITCH record is inserted whenever the running process changes.

Other blocking (pipes, sleeps, locks) is not modelled: a process runs until its slice ends
whatever it waited for in reality.  Logs of processes that no FORK record announces (e.g.
created by a ``clone3`` Valgrind could not decode) are run at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as _dt
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numba import njit

from ..errors import TraceError
from ..fileio import check_output_path
from .lackey import MARK_WAIT, LackeyParser
from .parquet import TraceWriter
from .records import Kind, Trace

DEFAULT_SLICE = 1_000_000
READ_BYTES = 4 << 20
POLL_SECONDS = 0.002
PUNCH_BYTES = 64 << 20
TAIL_LINES = 20

_ACTION_LUT = np.zeros(256, dtype=bool)
_ACTION_LUT[[int(Kind.FORK), int(Kind.EXIT), MARK_WAIT]] = True
_LOG_RE = re.compile(r"lackey\.(\d+)(?:\.(\d+))?$")
_STREAM_RE = re.compile(r"mvtrace\.(\d+)\.(\d+)$")


class CaptureFailed(TraceError):
    """The captured command exited with a non-zero status."""

    def __init__(self, message: str, status: int, tail: list[str]):
        super().__init__(message)
        self.status = status
        self.tail = tail


# --------------------------------------------------------------------------------------------
# process streams


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    state = stat[stat.rfind(b")") + 2:][:1]
    return state not in (b"Z", b"X", b"x")


_libc = None


def _punch_hole(path: Path, length: int) -> None:
    """Free the first ``length`` bytes of a file that a writer still appends to (best effort;
    the file keeps its size, the blocks are released)."""
    global _libc
    if length <= 0:
        return
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                                        ctypes.c_int64]
        fd = os.open(path, os.O_WRONLY)
        try:
            _libc.fallocate(fd, 0x01 | 0x02, 0, length)  # KEEP_SIZE | PUNCH_HOLE
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass


FILE_END = object()  # the current log ended and the next one of the same pid follows
STREAM_END = object()  # no more data for this process


class ProcStream:
    """The log (Lackey text) or stream (mvtrace) files of one process, in order, read as
    they grow."""

    def __init__(self, pid: int, files: list[Path], live: Callable[[int], bool] | None,
                 rescan: Callable[[], None] | None = None, read_bytes: int = READ_BYTES,
                 release: bool = False, binary: bool = False):
        self.pid = pid
        self.binary = binary  # mvtrace streams: hand out bytes as they come, not lines
        self.files = files  # appended to by the watcher
        self._live = live
        self._rescan = rescan
        self._read_bytes = read_bytes
        self._release = release
        self._cur = 0
        self._fh = None
        self._carry = b""
        self._pos = 0
        self._punched = 0
        self.name = f"pid {pid}"
        self.bytes_read = 0  # what the tool wrote for this process (for benchmarks)

    def _open_next(self) -> bool:
        if self._cur < len(self.files):
            path = self.files[self._cur]
            self._fh = open(path, "rb")
            self.name = str(path)
            self._pos = 0
            self._punched = 0
            return True
        return False

    def _lines(self, data: bytes):
        if self.binary:
            return data
        if self._carry:
            data = self._carry + data
        cut = data.rfind(b"\n")
        if cut < 0:
            self._carry = data
            return None
        self._carry = data[cut + 1:]
        return data[:cut + 1]

    def _close_current(self) -> None:
        path = self.files[self._cur]
        self._fh.close()
        self._fh = None
        self._cur += 1
        if self._release:
            with contextlib.suppress(OSError):
                path.unlink()

    def read(self):
        """Complete lines (bytes), ``FILE_END``, ``STREAM_END``, or None (nothing yet)."""
        if self._fh is None and not self._open_next():
            if self._live is not None and self._live(self.pid):
                return None
            if self._rescan is not None:
                self._rescan()
                if self._open_next():
                    return self.read()
            return STREAM_END
        data = self._fh.read(self._read_bytes)
        if data:
            self._pos += len(data)
            self.bytes_read += len(data)
            lines = self._lines(data)
            done = (self._pos - len(self._carry)) & ~4095
            if self._release and done - self._punched >= PUNCH_BYTES:
                _punch_hole(self.files[self._cur], done)
                self._punched = done
            return lines
        # at the end of the current file
        if self._cur + 1 < len(self.files):
            rest = self._fh.read(self._read_bytes)  # the old image is gone: its log is
            if rest:  # complete (read on in blocks: memory stays bounded)
                self.bytes_read += len(rest)
                return self._lines(rest) or self.read()
            return self._finish_file()
        if self._live is not None and self._live(self.pid):
            return None
        if self._rescan is not None:
            self._rescan()
            if self._cur + 1 < len(self.files):
                return self.read()
        rest = self._fh.read(self._read_bytes)
        if rest:
            self.bytes_read += len(rest)
            return self._lines(rest) or self.read()
        return self._finish_file(final=True)

    def _finish_file(self, final: bool = False):
        if self._carry:
            last, self._carry = self._carry, b""
            return last  # a last line without its newline
        self._close_current()
        if final and self._cur >= len(self.files):
            return STREAM_END
        return FILE_END


class LogWatcher:
    """Watch Valgrind's log directory; rename each new ``lackey.PID[.N]`` (or
    ``mvtrace.PID.SEQ``) file into ``DIR/streams/`` at once and index it by pid (in creation
    order)."""

    def __init__(self, directory: Path, interval: float = POLL_SECONDS, binary: bool = False):
        self.dir = Path(directory)
        self.binary = binary
        self._pattern = _STREAM_RE if binary else _LOG_RE
        self.streams_dir = self.dir / "streams"
        self.streams_dir.mkdir(exist_ok=True)
        self.interval = interval
        self.files: dict[int, list[Path]] = {}
        self.order: list[int] = []
        self._seen: set[int] = set()
        self._seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memvirt-capture-watch",
                                        daemon=True)

    def start(self) -> LogWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.scan()
            self._stop.wait(self.interval)

    def scan(self) -> None:
        with self._lock:
            try:
                entries = [e.name for e in os.scandir(self.dir) if e.is_file()]
            except OSError:
                return
            found = []
            for name in entries:
                m = self._pattern.match(name)
                if m:
                    n = int(m.group(2) or 0)
                    found.append((n if self.binary else -n, name, int(m.group(1))))
            # two logs of one pid in one scan: Lackey's fork child's log (.N, N > 1) was
            # there before the log of its exec'd image (.1); mvtrace numbers images in order
            for _, name, pid in sorted(found):
                self._seq += 1
                dest = self.streams_dir / f"{self._seq:06d}.{pid}.log"
                try:
                    os.rename(self.dir / name, dest)
                except OSError:
                    continue
                if pid not in self._seen:
                    self._seen.add(pid)
                    self.order.append(pid)
                self.files.setdefault(pid, []).append(dest)

    def stream(self, pid: int) -> ProcStream:
        with self._lock:
            files = self.files.setdefault(pid, [])
        return ProcStream(pid, files, live=pid_alive, rescan=self.scan, release=True,
                          binary=self.binary)

    def pids(self) -> list[int]:
        with self._lock:
            return list(self.order)


class StaticLogs:
    """Finished Lackey logs or mvtrace streams: ``{pid: [file, ...]}`` (files of one pid in
    exec order)."""

    def __init__(self, files: dict[int, Sequence[Path]], binary: bool = False):
        self.files = {int(p): [Path(f) for f in fs] for p, fs in files.items()}
        self.binary = binary

    def stream(self, pid: int) -> ProcStream:
        return ProcStream(pid, list(self.files.get(pid, [])), live=None, binary=self.binary)

    def pids(self) -> list[int]:
        return list(self.files)

    @classmethod
    def from_directory(cls, directory) -> StaticLogs:
        """Logs named ``lackey.PID`` or ``lackey.PID.N`` (as ``--log-file=DIR/lackey.%p.%n``
        leaves them when no process called execve twice)."""
        found: dict[int, list[tuple[int, Path]]] = {}
        for path in Path(directory).iterdir():
            m = _LOG_RE.match(path.name)
            if m:
                found.setdefault(int(m.group(1)), []).append((int(m.group(2) or 0), path))
        return cls({pid: [p for _, p in sorted(v)] for pid, v in found.items()})


# --------------------------------------------------------------------------------------------
# the one-vCPU scheduler


@dataclass
class _Proc:
    pid: int
    parent: int | None
    stream: ProcStream
    parser: LackeyParser
    buf: Trace | None = None
    off: int = 0
    cum: np.ndarray | None = None  # cumulative icount of buf
    actions: np.ndarray | None = None  # indices of FORK/EXIT/WAIT records in buf
    syncs: np.ndarray | None = None  # indices of sync-point records in buf (sync > 1)
    sync_starts: np.ndarray | None = None  # instructions of buf before each of them
    instr: int = 0  # instructions of the process before buf
    image_start: int = 0  # ... at the start of its current image (its last EXEC)
    state: str = "ready"  # ready | blocked | done
    waiting: int | None = None
    children: set[int] = field(default_factory=set)
    zombies: set[int] = field(default_factory=set)
    emitted: bool = False  # has records (or a FORK announced it)


@njit(cache=True)
def _index(kind, icount, instr, image_start, sync, action_lut):
    """One pass over a process's records: cumulative instructions, the indices of its
    FORK/EXIT/WAIT records, and (sync > 1) of its sync points (docs/mvtrace-format.md: the
    fetch of every instruction whose index in its process image is a multiple of ``sync``;
    an image starts at its EXEC record).  ``instr``: the process's instructions before these
    records; ``image_start``: its count when its image started.  Returns (cum, actions,
    syncs, image_start after the records)."""
    n = kind.shape[0]
    cum = np.empty(n, np.int64)
    actions = np.empty(n, np.int64)
    syncs = np.empty(n if sync > 1 else 0, np.int64)
    na = 0
    ns = 0
    c = 0
    for i in range(n):
        k = kind[i]
        if sync > 1:
            img = instr + c - image_start
            if k == 0 and img > 0 and img % sync == 0:
                syncs[ns] = i
                ns += 1
            if k == 12:  # EXEC: the engine resets the count, then adds this record's icount
                image_start = instr + c
        if action_lut[k]:
            actions[na] = i
            na += 1
        c += icount[i]
        cum[i] = c
    return cum, actions[:na].copy(), syncs[:ns].copy(), image_start


def _event(kind: int, pid: int, addr: int = 0) -> Trace:
    return Trace.from_records([(int(kind), addr, 0, pid, 0)])


class Scheduler:
    """Merge per-process Lackey streams into one timeline (see the module docstring)."""

    def __init__(self, logs, initial_pid: int, slice_instructions: int = DEFAULT_SLICE,
                 idle: Callable[[], None] | None = None, poll: float = POLL_SECONDS,
                 parser: Callable[[int], object] | None = None, sync: int = 1):
        if slice_instructions <= 0:
            raise TraceError(f"the time slice must be a positive number of instructions, "
                             f"not {slice_instructions}")
        if sync < 1:
            raise TraceError(f"the sync interval must be at least 1, not {sync}")
        self.parser = parser or (lambda pid: LackeyParser(f"pid {pid}", pid=pid, markers=True))
        self.sync = int(sync)
        self.logs = logs
        self.initial_pid = int(initial_pid)
        self.slice = int(slice_instructions)
        self.idle = idle
        self.poll = poll
        self.procs: dict[int, _Proc] = {}
        self.ready: deque[int] = deque()
        self.running: int | None = None
        self.switches = 0
        self.waiting_for_data = False

    def _new_proc(self, pid: int, parent: int | None) -> _Proc:
        p = _Proc(pid, parent, self.logs.stream(pid), self.parser(pid))
        self.procs[pid] = p
        self.ready.append(pid)
        return p

    # -- reading
    def _fill(self, p: _Proc) -> bool:
        """Make sure ``p`` has unread records; False when its stream has ended."""
        while p.buf is None or p.off >= len(p.buf):
            got = p.stream.read()
            if got is None:
                self.waiting_for_data = True
                if self.idle is not None:
                    self.idle()
                time.sleep(self.poll)
                continue
            self.waiting_for_data = False
            if got is STREAM_END:
                tail = p.parser.end_of_file()
                if not len(tail):
                    return False
                self._set_buf(p, tail)
                continue
            p.parser.name = p.stream.name
            if got is FILE_END:
                piece = p.parser.end_of_file()
                p.parser.lines = 0
            else:
                piece = p.parser.parse(got)
            if len(piece):
                self._set_buf(p, piece)
        return True

    def _set_buf(self, p: _Proc, piece: Trace) -> None:
        if p.buf is not None:
            p.instr += int(p.cum[-1]) if len(p.cum) else 0
        p.buf = piece
        p.off = 0
        p.cum, p.actions, p.syncs, p.image_start = _index(piece.kind, piece.icount, p.instr,
                                                          p.image_start, self.sync, _ACTION_LUT)
        p.sync_starts = p.cum[p.syncs] - piece.icount[p.syncs].astype(np.int64)

    def _take(self, p: _Proc, budget: int):
        """Records of ``p`` up to the end of its slice or its next FORK/EXIT/WAIT.
        Returns (piece, action record index in piece or -1, instructions, slice_over)."""
        buf, off = p.buf, p.off
        n = len(buf)
        before = int(p.cum[off - 1]) if off else 0
        # the slice ends just before the first record whose cumulative instruction count
        # exceeds the budget: the fetch of the next instruction, so that the data accesses
        # of the slice's last instruction stay in the slice
        stop = int(np.searchsorted(p.cum, before + budget, side="right"))
        if self.sync > 1 and stop < n:
            # ... and only at a sync point, where every collapsed run was closed: the first
            # one whose instruction is not before the budget's end.  (Not the first sync
            # record from that record on: a collapsed fetch record can start at a sync point
            # before the budget's end and run past it, and ending the slice before it would
            # end it earlier than the same run's uncollapsed trace does.)
            i = max(int(np.searchsorted(p.syncs, off)),
                    int(np.searchsorted(p.sync_starts, before + budget)))
            stop = int(p.syncs[i]) if i < len(p.syncs) else n
        slice_over = stop < n
        a = int(np.searchsorted(p.actions, off))
        action = -1
        if a < len(p.actions) and int(p.actions[a]) < stop:
            stop = int(p.actions[a]) + 1
            action = stop - 1 - off
            slice_over = False
        piece = buf.slice(off, stop)
        instr = (int(p.cum[stop - 1]) if stop else 0) - before
        p.off = stop
        return piece, action, instr, slice_over

    # -- scheduling
    def _exit(self, p: _Proc) -> None:
        p.state = "done"
        for c in p.children:
            if c in self.procs:
                self.procs[c].parent = None
        parent = self.procs.get(p.parent) if p.parent is not None else None
        if parent is not None and parent.state != "done":
            parent.children.discard(p.pid)
            if parent.state == "blocked" and parent.waiting in (-1, p.pid):
                parent.state = "ready"
                parent.waiting = None
                self.ready.append(parent.pid)
            else:
                parent.zombies.add(p.pid)

    def _wait(self, p: _Proc, target: int, nohang: bool) -> bool:
        """Handle a wait4/waitid entry; True when ``p`` blocks."""
        if nohang:
            return False
        if target == -1:
            if p.zombies:
                p.zombies.pop()
                return False
            live = [c for c in p.children if self.procs.get(c) and
                    self.procs[c].state != "done"]
            if not live:
                return False
        else:
            if target in p.zombies:
                p.zombies.discard(target)
                return False
            c = self.procs.get(target)
            if target not in p.children or c is None or c.state == "done":
                return False
        p.state = "blocked"
        p.waiting = target
        return True

    def _next_ready(self) -> int | None:
        while self.ready:
            pid = self.ready.popleft()
            if self.procs[pid].state == "ready":
                return pid
        blocked = [p for p in self.procs.values() if p.state == "blocked"]
        if blocked:  # everything waits on something the model cannot see: wake the oldest
            p = blocked[0]
            p.state, p.waiting = "ready", None
            return p.pid
        rescan = getattr(self.logs, "scan", None)
        if rescan is not None:
            rescan()
        for pid in self.logs.pids():  # logs of processes no FORK announced
            if pid not in self.procs:
                self._new_proc(pid, None)
                return self.ready.popleft()
        return None

    def run(self) -> Iterator[Trace]:
        self._new_proc(self.initial_pid, None)
        while True:
            pid = self._next_ready()
            if pid is None:
                return
            p = self.procs[pid]
            budget = self.slice
            switched = False
            while True:
                if not self._fill(p):
                    if p.emitted:
                        if not switched:
                            yield from self._switch_to(pid)
                        yield _event(Kind.EXIT, pid)
                    self._exit(p)
                    break
                if not switched:
                    yield from self._switch_to(pid)
                    switched = True
                piece, action, instr, slice_over = self._take(p, budget)
                budget -= instr
                if action >= 0:
                    kind = int(piece.kind[action])
                    rec_addr = int(piece.addr[action])
                    if kind == MARK_WAIT:
                        out = Trace.concat([piece.slice(0, action),
                                            piece.slice(action + 1, len(piece))])
                    else:
                        out = piece
                    if len(out):
                        p.emitted = True
                        yield out
                    if kind == Kind.FORK:
                        child = rec_addr
                        if child not in self.procs:
                            self._new_proc(child, pid).emitted = True  # announced
                            p.children.add(child)
                    elif kind == Kind.EXIT:
                        self._exit(p)
                        break
                    elif kind == MARK_WAIT:
                        target = int(np.uint64(rec_addr).view(np.int64))
                        if self._wait(p, target, bool(piece.size[action] & 1)):
                            break
                    continue
                if len(piece):
                    p.emitted = True
                    yield piece
                if slice_over:
                    self.ready.append(pid)
                    break

    def _switch_to(self, pid: int) -> Iterator[Trace]:
        if self.running is not None and self.running != pid:
            self.switches += 1
            yield _event(Kind.SWITCH, pid)
        self.running = pid


def merge_lackey_logs(files: dict[int, Sequence[Path]], initial_pid: int,
                      slice_instructions: int = DEFAULT_SLICE) -> Trace:
    """Merge finished per-process Lackey logs (``{pid: [file, ...]}``) in memory."""
    sched = Scheduler(StaticLogs(files), initial_pid, slice_instructions)
    return Trace.concat(list(sched.run()), meta={"source": "lackey-merge"})


# --------------------------------------------------------------------------------------------
# running valgrind


def valgrind_version(exe: str = "valgrind") -> str:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise TraceError(f"cannot run {exe} --version: {e}") from None
    return out.stdout.strip() or out.stderr.strip()


def _version_tuple(v: str) -> tuple[int, ...]:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", v)
    return tuple(int(x) for x in m.groups(default="0")) if m else (0,)


def find_valgrind() -> str:
    exe = shutil.which("valgrind")
    if exe is None:
        raise TraceError("valgrind is not installed; install it (apt-get install valgrind) "
                         "to capture programs")
    return exe


def _tail(path: Path, n: int = TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-n:]


@dataclass
class CaptureResult:
    path: Path
    status: int
    records: int
    instructions: int
    processes: int
    switches: int
    meta: dict
    output_tail: list[str]


BACKENDS = ("mvtrace", "lackey")
DEFAULT_SYNC = 8192


def _backend_command(backend: str, tmp: Path, cmd: list[str], collapse: str, sync: int,
                     version: str) -> tuple[list[str], dict]:
    """argv and environment of the valgrind run of ``backend``."""
    if backend == "mvtrace":
        from .mvtool import valgrind_command

        return valgrind_command(tmp, cmd, collapse=collapse, sync=sync)
    template = "lackey.%p.%n" if _version_tuple(version) >= (3, 15) else "lackey.%p"
    argv = [find_valgrind(), "--tool=lackey", "--trace-mem=yes", "--trace-syscalls=yes",
            "--trace-children=yes", f"--log-file={tmp / template}", *cmd]
    # Run Lackey from mvtrace's private VALGRIND_LIB when the tool can be had: the folder
    # changes Valgrind's start-up slightly, so both backends then see the same program run.
    from .mvtool import client_env, tool_dir

    try:
        lib = str(tool_dir() / "lib")
    except TraceError:
        lib = None
    return argv, client_env(lib)


def capture(cmd: Sequence[str], out, *, slice_instructions: int = DEFAULT_SLICE,
            progress: Callable[[dict], None] | None = None, allow_failure: bool = False,
            output_log=None, workdir=None, backend: str = "mvtrace", collapse: str = "page",
            sync: int = DEFAULT_SYNC, extra_meta: dict | None = None,
            interrupt: Callable[[], None] | None = None) -> CaptureResult:
    """Run ``cmd`` under Valgrind and write the merged trace to ``out`` (Parquet).

    ``backend``: ``mvtrace`` (memvirt's own tool: binary, collapsed unless ``collapse`` is
    ``none``) or ``lackey`` (Valgrind's Lackey, text: the slow reference).  ``sync``: the
    sync-point interval G in instructions (time slices and sampling periods end only at sync
    points, so collapsed and full captures simulate identically).  ``progress`` is called now
    and then with a dict (records, instructions, processes, running, elapsed).  A non-zero
    exit status raises ``CaptureFailed`` (no trace written) unless ``allow_failure``.  The
    command's stdout and stderr go to ``output_log`` (default: a temporary file, whose last
    lines are reported on failure).  ``interrupt()`` is called after every piece written and
    while waiting for data: an exception it raises (``KeyboardInterrupt`` when the CLI got
    SIGTERM) stops the capture like any other failure, which kills Valgrind's whole process
    group, drops the temporary trace file (no file appears under ``out``) and removes the
    temporary folder."""
    cmd = [str(c) for c in cmd]
    if not cmd:
        raise TraceError("capture needs a command to run (memvirt capture -o OUT -- CMD ...)")
    if slice_instructions <= 0:
        raise TraceError(f"--slice must be a positive number of instructions, "
                         f"not {slice_instructions}")
    if backend not in BACKENDS:
        raise TraceError(f"unknown capture backend '{backend}'; expected one of "
                         f"{', '.join(BACKENDS)}")
    if collapse not in ("page", "none"):
        raise TraceError(f"--collapse must be 'page' or 'none', not {collapse!r}")
    if backend == "lackey" and collapse != "none":
        collapse = "none"  # Lackey writes every access
    if not 1 <= sync < 2**31:
        raise TraceError(f"--sync must be between 1 and 2^31-1 instructions, not {sync}")
    exe = find_valgrind()
    version = valgrind_version(exe)
    out = Path(out)
    check_output_path(out, what="trace file")
    tmp = Path(tempfile.mkdtemp(prefix="memvirt-capture-", dir=workdir))
    started = time.monotonic()
    from .. import __version__

    meta = {
        "source": "capture",
        "command": shlex.join(cmd),
        "capture_date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "tools": {"valgrind": version, "memvirt": __version__},
        "backend": backend,
        "collapse": collapse,
        "sync_instructions": int(sync),
        "slice_instructions": int(slice_instructions),
        "scheduler": "one vCPU, round robin at sync points, wait4 blocks until the child exits",
        **(extra_meta or {}),
    }
    binary = backend == "mvtrace"
    parsers: dict[int, object] = {}

    def make_parser(pid: int):
        if binary:
            from .mvparse import MvtraceParser

            parsers[pid] = MvtraceParser(f"pid {pid}", pid, markers=True)
        else:
            parsers[pid] = LackeyParser(f"pid {pid}", pid=pid, markers=True)
        return parsers[pid]

    out_path = Path(output_log) if output_log else tmp / "output.txt"
    proc = None
    env = None
    watcher = None
    try:
        argv, env = _backend_command(backend, tmp, cmd, collapse, sync, version)
        if binary:
            meta["tools"]["mvtrace"] = _tool_version()
        watcher = LogWatcher(tmp, binary=binary).start()
        with open(out_path, "wb") as out_fh:
            try:
                proc = subprocess.Popen(argv, stdout=out_fh, stderr=subprocess.STDOUT,
                                        start_new_session=True, env=env)
            except OSError as e:
                raise TraceError(f"cannot run valgrind: {e}") from None
        stats = None  # the writer's (it counts as it writes)
        last_report = [0.0]
        sched_ref: list[Scheduler] = []

        def report(force: bool = False) -> None:
            if interrupt is not None:
                interrupt()
            now = time.monotonic()
            if progress is None or (not force and now - last_report[0] < 0.1):
                return
            last_report[0] = now
            s = sched_ref[0] if sched_ref else None
            progress({
                "records": stats.records if stats else 0,
                "instructions": stats.instructions if stats else 0,
                "accesses": int(stats.accesses.sum()) if stats else 0,
                "processes": len(s.procs) if s else 0,
                "running": s.running if s else None,
                "elapsed": now - started,
                "waiting": bool(s and s.waiting_for_data),
            })

        sched = Scheduler(watcher, proc.pid, slice_instructions, idle=report, parser=make_parser,
                          sync=sync)
        sched_ref.append(sched)
        with TraceWriter(out, meta) as writer:
            stats = writer.stats
            for piece in sched.run():
                writer.write(piece)
                report()
            status = proc.wait()
            if interrupt is not None:
                interrupt()
            tail = _tail(out_path)
            if status != 0 and not allow_failure:
                shown = f": {tail[-1]}" if tail else ""
                raise CaptureFailed(f"the command {_status_text(status)}{shown} (no trace "
                                    f"written)", status, tail)
            if not writer.stats.records:
                shown = f": {tail[-1]}" if tail else ""
                raise CaptureFailed(f"the command left no trace{shown} (no trace written)",
                                    status, tail)
            writer.meta["exit_status"] = status
            writer.meta["switches"] = sched.switches
            writer.meta["stream_bytes"] = sum(p.stream.bytes_read for p in sched.procs.values())
            writer.meta.update(_process_info(parsers))
        report(force=True)
        return CaptureResult(out, status, writer.stats.records, writer.stats.instructions,
                             len(writer.stats.pids), sched.switches, dict(writer.meta), tail)
    except BaseException:
        if proc is not None:
            _stop_group(proc, env)
        raise
    finally:
        if watcher is not None:
            watcher.stop()
        shutil.rmtree(tmp, ignore_errors=True)


STOP_GRACE_SECONDS = 1.0


def _group_pids(pgid: int) -> set[int]:
    """The live processes of process group ``pgid``."""
    pids = set()
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return pids
    for name in entries:
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and fields[0] not in (b"Z", b"X") and fields[2] == str(pgid).encode():
            pids.add(int(name))
    return pids


def _stop_group(proc: subprocess.Popen, env: dict | None) -> None:
    """Stop Valgrind's whole process group (the command's children, each under its own
    Valgrind with --trace-children, outlive a killed parent): SIGTERM, so that Valgrind ends
    as when its program is terminated (removing its vgdb FIFOs from $TMPDIR), then, after a
    grace period (Lackey can take seconds to act on it), SIGKILL for whatever is left, and
    the FIFOs of the processes killed so are removed."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    left = _group_pids(proc.pid)
    while left and time.monotonic() < deadline:
        proc.poll()  # (reaps the leader)
        time.sleep(0.02)
        left = _group_pids(proc.pid)
    if left:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait()
    if left:
        # valgrind's --vgdb-prefix default: $TMPDIR/vgdb-pipe, then -{what}-{pid}-by-...
        tmp = Path((env if env is not None else os.environ).get("TMPDIR") or "/tmp")
        for pid in left:
            for what in ("from-vgdb-to", "to-vgdb-from", "shared-mem-vgdb"):
                for f in tmp.glob(f"vgdb-pipe-{what}-{pid}-by-*"):
                    with contextlib.suppress(OSError):
                        f.unlink()


def _status_text(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with status {status}"


def _tool_version() -> str:
    from .mvtool import TOOL_VERSION

    return TOOL_VERSION


def _process_info(parsers: dict) -> dict:
    """What the parsers learned beyond the records: cut-short streams, threads, the initial
    address space, exec'd paths (mvtrace only)."""
    info: dict = {}
    truncated = sorted(pid for pid, p in parsers.items() if getattr(p, "truncated", False))
    info["truncated"] = bool(truncated)
    if truncated:
        info["truncated_pids"] = truncated
    if any(hasattr(p, "threads") and isinstance(p.threads, set) for p in parsers.values()):
        info["threads"] = {str(pid): max(1, len(p.threads)) for pid, p in sorted(parsers.items())
                           if isinstance(getattr(p, "threads", None), set)}
        first = next(iter(parsers.values()))
        maps = getattr(first, "initial_maps", None)
        if maps:
            info["initial_address_space"] = [
                {"start": a, "length": n, "prot": "".join(c for c, b in zip("rwx", (1, 2, 4))
                                                            if pr & b) or "-",
                 "kind": {0: "anonymous", 1: "file"}.get(k, "other")}
                for a, n, pr, k in maps]
        paths = [x for p in parsers.values() for x in getattr(p, "exec_paths", [])]
        if paths:
            info["exec_paths"] = paths[:100]
    return info


__all__ = ["BACKENDS", "DEFAULT_SLICE", "DEFAULT_SYNC", "CaptureFailed", "CaptureResult", "LogWatcher", "ProcStream",
           "Scheduler", "StaticLogs", "capture", "find_valgrind", "merge_lackey_logs",
           "valgrind_version"]
