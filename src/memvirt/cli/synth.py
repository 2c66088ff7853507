"""memvirt synth: write a synthetic trace (chase, compile, stream, ...) to a Parquet file.

    memvirt synth chase --param records=2e6 --param footprint_mib=128 -o chase.parquet
    memvirt synth --list
"""

from __future__ import annotations

import sys
import textwrap
import time

from ..errors import MemvirtError

NAME = "synth"
HELP = "generate a synthetic trace (memvirt synth --list shows generators and parameters)"


def add_arguments(p) -> None:
    p.add_argument("generator", nargs="?", metavar="NAME", help="generator name")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="generator parameter (repeatable); values are read as int, float "
                   "or string, e.g. --param records=1e6 --param fault_style=fork")
    p.add_argument("-o", "--output", metavar="OUT.parquet", help="trace file to write")
    p.add_argument("--memory-budget", type=float, metavar="FRACTION", default=None,
                   help="refuse a generator that builds its trace in memory when that would take "
                   "more than this share of the memory available (default 0.8; 0 turns the "
                   "check off)")
    p.add_argument("--list", action="store_true",
                   help="list the generators and their parameters, then exit")


def parse_value(raw: str):
    """int (1000, 1_000, 0x1000), else float (1e6, 2.5), else the string itself."""
    s = raw.strip()
    try:
        return int(s.replace("_", ""), 0)
    except ValueError:
        pass
    try:
        return float(s.replace("_", ""))
    except ValueError:
        return s


def parse_params(items: list[str]) -> dict:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MemvirtError(f"--param '{item}': expected KEY=VALUE")
        params[key.strip()] = parse_value(value)
    return params


def list_generators(out=None) -> None:
    out = out or sys.stdout
    from ..trace.synth import generators

    for name, spec in generators().items():
        print(f"{name}: {spec.summary}", file=out)
        width = max(len(k) for k in spec.params_doc)
        for key, text in spec.params_doc.items():
            lines = textwrap.wrap(text, 96 - width) or [""]
            print(f"    {key:<{width}}  {lines[0]}", file=out)
            for line in lines[1:]:
                print(f"    {'':<{width}}  {line}", file=out)
        print(file=out)


def run(args) -> int:
    if args.list:
        list_generators()
        return 0
    from ._common import sigterm_aborts

    # SIGTERM stops the command like Ctrl-C: the writer drops its temporary file, exit 130
    with sigterm_aborts() as term:
        return _run(args, term)


def _run(args, term) -> int:
    from ..trace.synth import generators, synthesize

    if not args.generator:
        raise MemvirtError("name a generator (one of: " + ", ".join(generators())
                           + "), or pass --list")
    if not args.output:
        raise MemvirtError("give the output file with -o OUT.parquet")
    params = parse_params(args.param)
    t0 = time.perf_counter()
    if args.memory_budget is not None and not 0 <= args.memory_budget < float("inf"):
        raise MemvirtError(f"--memory-budget must be a number >= 0, got {args.memory_budget}")
    trace = synthesize(args.generator, memory_budget_fraction=args.memory_budget, **params)
    dt = time.perf_counter() - t0
    from ..trace.parquet import ROW_GROUP_RECORDS, TraceWriter

    term.check()
    path = args.output
    with TraceWriter(path, dict(trace.meta)) as w:  # what write_trace does, checking SIGTERM
        for chunk in trace.chunks(ROW_GROUP_RECORDS):
            term.check()
            w.write(chunk)
        term.check()
    print(f"{path}: {len(trace):,} records, {trace.instructions:,} instructions "
          f"({args.generator}, generated in {dt:.2f} s)")
    return 0
