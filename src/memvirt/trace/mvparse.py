"""One process's mvtrace stream as memvirt records (the capture scheduler's parser).

``MvtraceParser`` has the interface of ``LackeyParser`` that ``capture.Scheduler`` uses:
``parse(data)`` for the next bytes of the current stream file, ``end_of_file()`` when a file
ends (the next file of the same pid is the image an ``execve`` started).  It decodes with
``mvstream.StreamDecoder`` (the only module that knows the binary format) and turns the
events into records with ``syscalls.SyscallModel`` (the same meaning as for Lackey logs):

- access records keep their repeat counts and lines bitmaps (``lines``: 0 where the stream
  gives none); a fetch record of repeat n retires n instructions;
- SYSCALL / SYSCALL_PRE records become MMAP, MUNMAP, BRK, FORK, EXIT and (for the scheduler)
  wait markers; an ``execve`` whose stream ends without a failure result replaced the image
  (EXEC); SIGNAL (a fatal signal) gives EXIT;
- MAP records (the initial address space Valgrind's loader mapped) and THREAD records go to
  ``info`` (metadata), not to the timeline;
- END carries the tool's own raw counts: they must equal the decoded records (an integrity
  check of the whole pipeline); a stream without END was cut short (``truncated``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..errors import TraceError
from . import mvstream as mv
from .records import Trace, is_zero_lines
from .syscalls import EXECS, X86_64, SyscallModel


@njit(cache=True)
def _icount_and_totals(kind, repeat, totals):
    """Instructions per record (a fetch record of repeat n retires n) and the running
    accesses per kind, in one pass."""
    icount = np.zeros(kind.shape[0], np.uint32)
    for i in range(kind.shape[0]):
        k = kind[i]
        totals[k] += repeat[i]
        if k == 0:
            icount[i] = repeat[i]
    return icount


def _success(value: int) -> bool:
    # Linux returns -errno in [-4095, -1]; anything else (addresses included) is success.
    return not -4096 < value < 0


class MvtraceParser:
    """Incremental parser of the stream files of one pid (see the module docstring)."""

    def __init__(self, name: str, pid: int, markers: bool = False):
        self.name = str(name)
        self.pid = int(pid)
        self.lines = 0  # (the scheduler resets it per file; unused here)
        self.model = SyscallModel(markers)
        self.images = 0  # stream files finished
        self.truncated = False  # a stream file ended without END
        self.threads: set[int] = set()
        self.initial_maps: list[tuple[int, int, int, int]] = []
        self.exec_paths: list[str] = []
        self.exit_codes: list[int] = []
        self._new_file()

    def _new_file(self) -> None:
        self.decoder = mv.StreamDecoder(self.name)
        self._totals = np.zeros(4, np.int64)  # I, L, S, M accesses decoded (repeats summed)
        self._records = 0
        self._exec_pending = False
        self._ended = False

    # -- decoding
    def parse(self, data) -> Trace:
        self.decoder.name = self.name
        block = self.decoder.feed(data)
        kind, rep = block.kind, block.repeat
        icount = _icount_and_totals(kind, rep, self._totals)
        self._records += len(kind)
        evs: list[tuple[int, int, int, int]] = []  # (pos, kind, addr, size)
        for pos, tag, values in block.events:
            for k, a, s in self._event(tag, values):
                evs.append((pos, int(k), int(a), int(s)))
        pid = np.full(len(kind), self.pid, np.int64)
        if not evs:
            return Trace(kind=kind, addr=block.addr, size=block.size, pid=pid, icount=icount,
                         repeat=rep, lines=block.lines)
        pos = np.array([e[0] for e in evs], np.int64)
        n = len(evs)
        return Trace(
            kind=np.insert(kind, pos, np.array([e[1] for e in evs], np.uint8)),
            addr=np.insert(block.addr, pos, np.array([e[2] for e in evs], np.uint64)),
            size=np.insert(block.size, pos, np.array([e[3] for e in evs], np.uint64)),
            pid=np.insert(pid, pos, np.full(n, self.pid, np.int64)),
            icount=np.insert(icount, pos, np.zeros(n, np.uint32)),
            repeat=np.insert(rep, pos, np.ones(n, np.uint32)),
            lines=None if is_zero_lines(block.lines)  # (a full stream: a shared zero column)
            else np.insert(block.lines, pos, np.zeros(n, np.uint64)),
        )

    def _event(self, tag: int, values) -> list[tuple[int, int, int]]:
        if self._ended:
            raise TraceError(f"{self.name}: byte {self.decoder.offset}: a record after END")
        if tag in (mv.EV_SYSCALL, mv.EV_SYSCALL_PRE):
            call = X86_64.get(values[0])
            if call is None:
                return []
            args = values[2:2 + values[1]]
            if tag == mv.EV_SYSCALL_PRE:
                if call in EXECS:
                    self._exec_pending = True  # replaced unless a failure result follows
                    return []
                return self._checked(self.model.started, call, args)
            if call in EXECS:
                self._exec_pending = False  # the tool writes a result only for a failure
                return []
            result = values[2 + values[1]]
            if not _success(result):
                return []
            return self._checked(self.model.finished, call, args, result)
        if tag == mv.EV_THREAD:
            self.threads.add(int(values[0]))
        elif tag == mv.EV_MAP:
            self.initial_maps.append(tuple(int(v) for v in values))
        elif tag == mv.EV_EXEC_PATH:
            self.exec_paths.append(values.decode("utf-8", errors="replace"))
        elif tag == mv.EV_SIGNAL:
            return self.model.killed()
        elif tag == mv.EV_END:
            self._end(values)
        return []

    def _checked(self, fn, call, *args):
        try:
            return fn(call, *args)
        except (IndexError, ValueError):
            raise TraceError(f"{self.name}: byte {self.decoder.offset}: the {call} record has "
                             f"too few arguments") from None

    def _end(self, values) -> None:
        exit_code, instr, loads, stores, modifies, records = values
        got = (int(self._totals[0]), int(self._totals[1]), int(self._totals[2]),
               int(self._totals[3]), self._records)
        want = (instr, loads, stores, modifies, records)
        if got != want:
            raise TraceError(
                f"{self.name}: the stream's records add up to instructions/loads/stores/"
                f"modifies/records = {got}, but its END record says {want} (a corrupt stream)")
        self._ended = True
        self.exit_codes.append(int(exit_code))

    def end_of_file(self) -> Trace:
        """The current stream file ended (the process image is gone)."""
        out = []
        if self.decoder.pending:
            self.truncated = True  # a record cut in the middle: the writer died
        elif self.decoder.header is not None and not self._ended and not self._exec_pending:
            self.truncated = True
        if self._exec_pending:
            out = self.model.replaced()
        self.images += 1
        self._new_file()
        if not out:
            return Trace.empty()
        return Trace.from_records([(k, a, s, self.pid, 0) for k, a, s in out])
