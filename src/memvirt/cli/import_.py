"""memvirt import: convert a Lackey, ChampSim or Parquet trace into a memvirt trace file."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

from ..errors import MemvirtError

NAME = "import"
HELP = "convert a trace (lackey, champsim, parquet) into a memvirt trace file (Parquet)"


def add_arguments(p) -> None:
    p.add_argument("file", help="the trace to convert")
    p.add_argument("--format", help="input format (lackey, champsim, parquet, or any registered "
                   "reader); detected when omitted")
    p.add_argument("-o", "--output", required=True, metavar="OUT.parquet",
                   help="the memvirt trace file to write")
    p.add_argument("--pid", type=int,
                   help="pid of Lackey records that no ==PID== banner names (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")


def open_source(path: str, fmt: str | None, pid: int | None = None):
    """Open a trace file; a Lackey file gets ``pid`` when given."""
    from ..trace.base import open_trace, readers

    if pid is not None:
        p = Path(path)
        if fmt is None:
            spec = readers().get("lackey")
            if spec is None or not p.exists() or not spec.detect(p):
                raise MemvirtError("--pid applies to Lackey input only (add --format lackey)")
            fmt = "lackey"
        if fmt != "lackey":
            raise MemvirtError("--pid applies to Lackey input only")
        if not p.exists():
            from ..errors import TraceError

            raise TraceError(f"{p}: no such trace file")
        from ..trace.lackey import read_lackey

        return read_lackey(p, pid=pid)
    return open_trace(path, fmt)


def progress_bar(description: str, quiet: bool):
    """A rich progress bar on stderr (None when quiet or stderr is not a terminal)."""
    if quiet:
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    con = Console(stderr=True)
    if not con.is_terminal:
        return None
    return Progress(TextColumn(description), BarColumn(), DownloadColumn(),
                    TextColumn("{task.fields[records]}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=con, transient=True)


class Termination:
    """Whether SIGTERM arrived (see ``sigterm_aborts``)."""

    def __init__(self) -> None:
        self.requested = False

    def check(self) -> None:
        """Stop here (KeyboardInterrupt) if SIGTERM arrived while compiled code ran."""
        if self.requested:
            raise KeyboardInterrupt


def _in_compiled_call(frame) -> bool:
    """True when the interrupted Python code runs inside a call into numba (its dispatcher
    calls back into Python): an exception raised there surfaces as a SystemError."""
    dirs = tuple(os.path.dirname(m.__file__) + os.sep
                 for m in (sys.modules.get("numba"), sys.modules.get("llvmlite"))
                 if m is not None and getattr(m, "__file__", None))
    while frame is not None and dirs:
        if frame.f_code.co_filename.startswith(dirs):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def sigterm_aborts() -> Iterator[Termination]:
    """While the block runs, SIGTERM aborts the command like Ctrl-C: KeyboardInterrupt (the
    trace writer drops its temporary file; the CLI exits 130), raised at once, or, if the
    signal arrives inside a call into compiled code, at the next ``Termination.check()``
    (the caller checks between chunks)."""
    term = Termination()
    if threading.current_thread() is not threading.main_thread():
        yield term
        return

    def handler(signum, frame):
        term.requested = True
        if not _in_compiled_call(frame):
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield term
    finally:
        signal.signal(signal.SIGTERM, old)


def run(args) -> int:
    # SIGTERM stops the import like Ctrl-C: the writer drops its temporary file, exit 130
    with sigterm_aborts() as term:
        return _run(args, term)


def _run(args, term: Termination) -> int:
    from .. import __version__
    from ..trace.parquet import TraceWriter

    src = open_source(args.file, args.format, args.pid)
    fmt = args.format or type(src).__name__
    meta = dict(getattr(src, "meta", {}) or {})
    meta.setdefault("source", fmt)
    meta["imported_from"] = Path(args.file).name
    meta["import_date"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    meta.setdefault("tools", {})
    if isinstance(meta["tools"], dict):
        meta["tools"]["memvirt"] = __version__
    get_progress = getattr(src, "progress", None)
    bar = progress_bar(f"import {Path(args.file).name}", args.quiet)
    with bar if bar is not None else nullcontext():
        task = None
        if bar is not None:
            total = get_progress()[1] if get_progress else None
            task = bar.add_task("import", total=total or None, records="")
        with TraceWriter(args.output, meta) as w:
            for chunk in src.chunks():
                term.check()
                w.write(chunk)
                if bar is not None:
                    done = get_progress()[0] if get_progress else w.stats.records
                    bar.update(task, completed=done, records=f"{w.stats.records:,} records")
            term.check()
    if not args.quiet:
        s = w.stats
        print(f"wrote {args.output}: {s.records:,} records, {s.instructions:,} instructions, "
              f"{len(s.pids)} process{'es' if len(s.pids) != 1 else ''}", file=sys.stderr)
    return 0
