"""memvirt capture: run a program under Valgrind Lackey and record its memory accesses."""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext

from ..errors import MemvirtError

NAME = "capture"
HELP = "run a program (and its children) under Valgrind and write a memvirt trace"


def add_arguments(p) -> None:
    from ..trace.capture import DEFAULT_SLICE, DEFAULT_SYNC

    p.add_argument("-o", "--output", required=True, metavar="OUT.parquet",
                   help="the memvirt trace file to write")
    p.add_argument("--slice", type=int, default=DEFAULT_SLICE, metavar="N",
                   help="time slice of the one-vCPU scheduler that merges processes, in "
                   f"instructions (default {DEFAULT_SLICE:,})")
    p.add_argument("--backend", choices=("mvtrace", "lackey"), default="mvtrace",
                   help="mvtrace: memvirt's Valgrind tool (binary, fast; default); lackey: "
                   "Valgrind's Lackey (text, slow, the reference)")
    p.add_argument("--collapse", choices=("page", "none"), default="page",
                   help="page: fold consecutive accesses to one page into one record with a "
                   "repeat count (lossless for memvirt's TLB model; default); none: one record "
                   "per access (for cache studies)")
    p.add_argument("--sync", type=int, default=DEFAULT_SYNC, metavar="G",
                   help="sync-point interval in instructions: time slices and sampling "
                   f"periods end only at sync points (default {DEFAULT_SYNC:,})")
    p.add_argument("--allow-failure", action="store_true",
                   help="write the trace even when the command exits non-zero")
    p.add_argument("--output-log", metavar="FILE",
                   help="keep the command's stdout and stderr in FILE")
    p.add_argument("--quiet", action="store_true", help="no progress display, no summary")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]",
                   help="the command to run")


def _display(quiet: bool):
    if quiet:
        return None, None
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    con = Console(stderr=True)
    if not con.is_terminal:
        return None, None
    prog = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                    console=con, transient=True)
    task = prog.add_task("starting valgrind")

    def update(d: dict) -> None:
        state = "waiting for valgrind" if d.get("waiting") else "converting"
        rate = d["instructions"] / d["elapsed"] / 1e6 if d.get("elapsed") else 0.0
        prog.update(task, description=(
            f"capture: {d['instructions']:,} instructions ({rate:.1f} M/s), "
            f"{d['records']:,} records, "
            f"{d['processes']} process{'es' if d['processes'] != 1 else ''} ({state})"))

    return prog, update


def run(args) -> int:
    from ._common import sigterm_aborts

    # SIGTERM stops the capture like Ctrl-C: Valgrind's process group is killed, the
    # temporary trace file and folder are removed, exit 130
    with sigterm_aborts() as term:
        return _run(args, term)


def _run(args, term) -> int:
    from ..trace.capture import CaptureFailed, capture

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise MemvirtError("capture needs a command: memvirt capture -o OUT.parquet -- CMD ...")
    prog, update = _display(args.quiet)
    try:
        with prog if prog is not None else nullcontext():
            res = capture(cmd, args.output, slice_instructions=args.slice, progress=update,
                          allow_failure=args.allow_failure, output_log=args.output_log,
                          backend=args.backend, collapse=args.collapse, sync=args.sync,
                          interrupt=term.check)
    except CaptureFailed as e:
        if e.tail:
            print("--- last lines of the command's output ---", file=sys.stderr)
            for line in e.tail:
                print(line, file=sys.stderr)
            print("---", file=sys.stderr)
        raise
    if not args.quiet:
        print(f"wrote {res.path}: {res.records:,} records, {res.instructions:,} instructions, "
              f"{res.processes} process{'es' if res.processes != 1 else ''}, "
              f"{res.switches} switches (exit status {res.status})", file=sys.stderr)
    return 0
