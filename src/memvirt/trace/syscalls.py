"""What a process's system calls mean for memvirt's guest OS model.

Shared by the readers of captured programs (Lackey text, mvtrace streams), so both turn the
same calls into the same records:

====================  ===========================================================
syscall               records (failed syscalls give none)
====================  ===========================================================
mmap, mmap2           MMAP addr = returned address, size = length
munmap                MUNMAP addr, size = length
brk                   BRK addr = the returned (new) break
mremap                moved: MUNMAP(old, old size) + MMAP(new, new size); in place:
                      MUNMAP of the dropped tail or MMAP of the added tail
fork, vfork, clone    FORK addr = child pid (the return value); a clone with
                      CLONE_THREAD creates a thread, not a process: no record
execve, execveat      EXEC, once the process image was replaced (the caller decides)
exit_group            EXIT at entry; ``exit`` gives EXIT when the last thread exits
wait4, waitid         (markers only) MARK_WAIT at entry: addr = the awaited pid as int64
                      (-1 = any child), size bit 0 = WNOHANG
====================  ===========================================================

Arguments come as a sequence whose items convert to ``int`` when read (the Lackey reader
passes lazily parsed text); a missing or unreadable argument raises IndexError or ValueError
for the caller to report with its position.
"""

from __future__ import annotations

from .records import Kind

#: Internal marker kind (only with ``markers=True``, used by ``capture``'s scheduler):
#: the process entered wait4/waitid.  addr = the awaited pid as int64 (-1 = any child),
#: size bit 0 = WNOHANG.
MARK_WAIT = 200

CLONE_THREAD = 0x10000
WNOHANG = 1
U64 = (1 << 64) - 1

#: x86-64 system call numbers of the calls above (and mprotect, recorded by mvtrace)
X86_64 = {9: "mmap", 10: "mprotect", 11: "munmap", 12: "brk", 25: "mremap", 56: "clone",
          57: "fork", 58: "vfork", 59: "execve", 60: "exit", 61: "wait4", 231: "exit_group",
          247: "waitid", 322: "execveat", 435: "clone3"}
EXECS = ("execve", "execveat")


def signed32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


class SyscallModel:
    """Per-process state (threads alive, exited) and the records each call gives.

    Events are ``(kind, addr, size)`` tuples, addr and size as unsigned 64-bit values."""

    def __init__(self, markers: bool = False):
        self.markers = markers
        self.threads = 1
        self.exited = False

    def started(self, call: str, args) -> list[tuple[int, int, int]]:
        """Effects at the entry of a call, whatever its result (exit, wait)."""
        if call == "exit_group":
            return self._exit()
        if call == "exit":
            self.threads -= 1
            return self._exit() if self.threads <= 0 else []
        if self.markers and call in ("wait4", "waitpid", "waitid"):
            if call == "waitid":
                idtype, ident, options = int(args[0]), int(args[1]), int(args[3])
                target = signed32(ident) if idtype == 1 else -1
            else:
                target, options = signed32(int(args[0])), int(args[2])
            if target == 0 or target < -1:
                target = -1  # process groups: any child
            return [(MARK_WAIT, target & U64, options & WNOHANG)]
        return []

    def finished(self, call: str, args, value: int) -> list[tuple[int, int, int]]:
        """Effects of a call that succeeded with return value ``value``."""
        if call in ("mmap", "mmap2"):
            return [(Kind.MMAP, value & U64, int(args[1]) & U64)]
        if call == "munmap":
            return [(Kind.MUNMAP, int(args[0]) & U64, int(args[1]) & U64)]
        if call == "brk":
            return [(Kind.BRK, value & U64, 0)]
        if call == "mremap":
            old, old_size, new_size = int(args[0]), int(args[1]), int(args[2])
            if value != old:
                return [(Kind.MUNMAP, old & U64, old_size & U64),
                        (Kind.MMAP, value & U64, new_size & U64)]
            if new_size < old_size:
                return [(Kind.MUNMAP, (old + new_size) & U64, (old_size - new_size) & U64)]
            if new_size > old_size:
                return [(Kind.MMAP, (old + old_size) & U64, (new_size - old_size) & U64)]
            return []
        if call in ("clone", "clone2"):
            if (int(args[0]) if len(args) else 0) & CLONE_THREAD:
                self.threads += 1
                return []
            return [(Kind.FORK, value, 0)] if value > 0 else []
        if call in ("fork", "vfork", "clone3"):
            return [(Kind.FORK, value, 0)] if value > 0 else []
        if call in EXECS:
            return self.replaced()
        return []

    def replaced(self) -> list[tuple[int, int, int]]:
        """The process image was replaced by execve."""
        self.threads = 1
        return [(Kind.EXEC, 0, 0)]

    def killed(self) -> list[tuple[int, int, int]]:
        """A fatal signal ended the process."""
        return self._exit()

    def _exit(self) -> list[tuple[int, int, int]]:
        if self.exited:
            return []
        self.exited = True
        return [(Kind.EXIT, 0, 0)]
