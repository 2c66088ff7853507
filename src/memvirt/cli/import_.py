"""memvirt import: convert a Lackey, ChampSim or Parquet trace into a memvirt trace file."""

from __future__ import annotations

import datetime as _dt
import sys
from contextlib import nullcontext
from pathlib import Path

from ..errors import MemvirtError
from ._common import Termination, sigterm_aborts

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
