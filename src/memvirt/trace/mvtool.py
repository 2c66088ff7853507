"""Build and run the ``mvtrace`` Valgrind tool (``trace/mvtrace/mvtrace.c``).

The tool is compiled on first use against the tool API that Debian's ``valgrind`` package
installs, into a per-user cache folder keyed by a hash of its sources::

    ~/.cache/memvirt/mvtrace/<hash>/mvtrace-amd64-linux
    ~/.cache/memvirt/mvtrace/<hash>/lib/    the private VALGRIND_LIB: the tool and symlinks
                                           to every stock file of /usr/libexec/valgrind

(``MEMVIRT_MVTRACE_DIR`` names a ready build folder instead).  Valgrind finds a tool only in
``$VALGRIND_LIB``, so programs run with that variable set; setting it changes Valgrind's
start-up slightly, which is why reference runs of Lackey (``lackey_command``) use the same
folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import TraceError
from .mvstream import FORMAT_VERSION

SOURCE_DIR = Path(__file__).resolve().parent / "mvtrace"
TOOL_NAME = "mvtrace"
PLATFORM = "amd64-linux"
TOOL_FILE = f"{TOOL_NAME}-{PLATFORM}"

VALGRIND_INCLUDE = Path("/usr/include/valgrind")
VALGRIND_LIBDIR = Path("/usr/lib/x86_64-linux-gnu/valgrind")
VALGRIND_EXEC = Path("/usr/libexec/valgrind")
STATIC_LIBS = tuple(f"lib{n}-{PLATFORM}.a" for n in ("coregrind", "vex", "gcc-sup"))
_INSTALL = "install them with: apt-get install valgrind gcc make"


def source_hash() -> str:
    """First 16 hex digits of the sha256 of mvtrace.c and the Makefile."""
    h = hashlib.sha256()
    for name in ("mvtrace.c", "Makefile"):
        h.update((SOURCE_DIR / name).read_bytes())
    return h.hexdigest()[:16]


#: format version + source hash: changes whenever the tool's output could change
TOOL_VERSION = f"{FORMAT_VERSION}-{source_hash()}"


def check_toolchain() -> None:
    """Raise ``TraceError`` (one line) when something needed to build or run the tool is
    missing."""
    for exe in ("valgrind", "gcc", "make"):
        if shutil.which(exe) is None:
            raise TraceError(f"cannot build the mvtrace tool: {exe} is missing; {_INSTALL}")
    header = VALGRIND_INCLUDE / "pub_tool_basics.h"
    if not header.is_file():
        raise TraceError(f"cannot build the mvtrace tool: {header} is missing (the Valgrind "
                         f"tool headers); {_INSTALL}")
    for name in STATIC_LIBS:
        if not (VALGRIND_LIBDIR / name).is_file():
            raise TraceError(f"cannot build the mvtrace tool: the static library "
                             f"{VALGRIND_LIBDIR / name} is missing; {_INSTALL}")
    if not VALGRIND_EXEC.is_dir():
        raise TraceError(f"cannot build the mvtrace tool: {VALGRIND_EXEC} is missing; "
                         f"{_INSTALL}")


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "memvirt" / "mvtrace"


def _built(folder: Path) -> bool:
    return (folder / "lib" / TOOL_FILE).is_file()


def tool_dir() -> Path:
    """The build folder of the tool (holding ``lib/``, the VALGRIND_LIB), built if needed."""
    env = os.environ.get("MEMVIRT_MVTRACE_DIR")
    if env:
        folder = Path(env).expanduser().resolve()
        if not _built(folder):
            raise TraceError(f"MEMVIRT_MVTRACE_DIR={env}: no {TOOL_FILE} in {folder / 'lib'} "
                             f"(build it with: make -C {SOURCE_DIR} BUILD={folder})")
        return folder
    folder = _cache_root() / source_hash()
    if _built(folder):
        return folder
    check_toolchain()
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Build in a private sibling and rename it into place, so that concurrent builders
    # never see (or clobber) a half-built folder: the first rename wins.
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        proc = subprocess.run(["make", "-s", "-C", str(SOURCE_DIR), f"BUILD={tmp}"],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not _built(tmp):
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            why = lines[-1] if lines else f"make exited with status {proc.returncode}"
            raise TraceError(f"cannot build the mvtrace tool: {why}")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _built(folder):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _valgrind() -> str:
    exe = shutil.which("valgrind")
    if exe is None:
        raise TraceError(f"valgrind is not installed; {_INSTALL}")
    return exe


def client_env(valgrind_lib: str | None = None) -> dict[str, str]:
    """The environment every capture runs Valgrind with (``VALGRIND_LIB`` set when given).

    ``LD_PRELOAD`` comes first, set (empty when the user has none): Valgrind prepends its
    preload objects to an existing binding in place, but appends a missing one as the last
    string of the client's environment, where the 16 random bytes of ``AT_RANDOM`` follow it.
    ld.so's generic ``strcspn`` over the preload list reads whole 4-byte groups, past the
    string's end, and looks each byte up in a 256-byte table on its stack: with the list last,
    random bytes chose the table entry and, when the table straddles a page, the page.  Two
    captures of one program then differed in a load or two (in which folder depended on where
    the stack strings ended).  Not last, the bytes after it are the next string's.  (Debian's
    ``valgrind`` wrapper script re-orders the environment by dash's hash buckets, and exports
    GLIBCXX_FORCE_NEW, which falls in the last bucket, so the list is not last there either.)"""
    env = {"LD_PRELOAD": os.environ.get("LD_PRELOAD", "")}
    env.update((k, v) for k, v in os.environ.items() if k != "LD_PRELOAD")
    if valgrind_lib is not None:
        env["VALGRIND_LIB"] = valgrind_lib
    return env


def _env() -> dict[str, str]:
    return client_env(str(tool_dir() / "lib"))


def valgrind_command(out_dir, cmd: Sequence[str], *, collapse: str = "page", sync: int = 8192,
                     trace_children: bool = True) -> tuple[list[str], dict[str, str]]:
    """argv and environment that run ``cmd`` under mvtrace, writing streams to ``out_dir``."""
    if collapse not in ("none", "page"):
        raise TraceError(f"collapse must be 'none' or 'page', not {collapse!r}")
    if not 1 <= int(sync) < 2**32:
        raise TraceError(f"the sync interval must be between 1 and 2**32-1, not {sync}")
    cmd = [str(c) for c in cmd]
    if not cmd:
        raise TraceError("mvtrace needs a command to run")
    argv = [_valgrind(), f"--tool={TOOL_NAME}", "-q",
            f"--trace-children={'yes' if trace_children else 'no'}",
            f"--out-dir={Path(out_dir).resolve()}", f"--collapse={collapse}",
            f"--sync={int(sync)}", *cmd]
    return argv, _env()


def lackey_env() -> dict[str, str]:
    """The environment of ``valgrind_command`` (VALGRIND_LIB set), for other Valgrind runs
    that must start exactly like mvtrace's (reference Lackey runs)."""
    return _env()


def lackey_command(log_template, cmd: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the Lackey reference run (``--trace-mem=yes``, children
    traced, one log per process image given a template such as ``DIR/lackey.%p.%n``), with
    the same VALGRIND_LIB as ``valgrind_command``."""
    argv = [_valgrind(), "--tool=lackey", "--trace-mem=yes", "--trace-children=yes",
            f"--log-file={log_template}", *[str(c) for c in cmd]]
    return argv, _env()


__all__ = ["TOOL_VERSION", "check_toolchain", "client_env", "lackey_command", "lackey_env", "source_hash",
           "tool_dir", "valgrind_command"]
