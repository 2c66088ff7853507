"""memvirt compare: every trace under every paging mode, side by side."""

from __future__ import annotations

import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

from ..errors import MemvirtError
from ._common import add_config_args, check_workers, config_from_args, sigterm_as_interrupt

NAME = "compare"
HELP = "simulate traces under native, shadow, nested and selective paging and compare them"


def add_arguments(p) -> None:
    p.add_argument("traces", nargs="+", metavar="TRACE",
                   help="trace file (parquet, lackey, champsim) or synth:NAME[:k=v,...]")
    p.add_argument("--modes", default="native,shadow,nested,selective",
                   help="comma-separated modes (default: native,shadow,nested,selective)")
    p.add_argument("--policy", default="dsp",
                   help="switching policy of the selective runs (default: dsp)")
    add_config_args(p)
    p.add_argument("--out", metavar="DIR", help="write results.json/.csv/.parquet, the plots "
                   "and report.html to DIR")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="parallel processes (default: number of CPUs; 1 = in-process)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress and no tables: only verdicts and written paths")


def parse_modes(text: str) -> tuple[str, ...]:
    from ..api import MODE_CHOICES

    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    for m in modes:
        if m not in MODE_CHOICES:
            raise MemvirtError(f"--modes: unknown mode '{m}'; expected some of "
                               f"{', '.join(MODE_CHOICES)}")
    if not modes:
        raise MemvirtError("--modes: no mode given")
    return modes


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["memvirt", *sys.argv[1:]])


@contextmanager
def status(message: str, quiet: bool = False):
    """A spinner on stderr while something takes a few seconds (terminals only)."""
    from rich.console import Console

    err = Console(stderr=True)
    if quiet or not err.is_terminal:
        yield
        return
    with err.status(message):
        yield


def finish(comp, out: str | None, quiet: bool) -> Path | None:
    """Write files (if ``out``) and print tables / verdicts; returns the report path."""
    from rich.console import Console

    con = Console()
    report = None
    if out:
        with status("writing results, plots and report.html", quiet):
            report = comp.report(out)
    if quiet:
        for t, v in comp.verdicts().items():
            print(f"{t}: {v}")
    else:
        from ..report.tables import print_tables

        print_tables(comp, con)
    if out:
        print(f"results: {Path(out) / 'results.json'} (.csv, .parquet), plots: {out}/*.png")
        print(f"report:  {report}")
    return report


def check_out(out: str | None) -> None:
    """The output folder of compare/demo, checked before any simulation: writable, and not
    a folder holding a sweep's results."""
    if out:
        from ..fileio import check_folder_kind, check_output_path
        from ..report.compare import FOLDER_KIND

        check_output_path(out, is_dir=True, what="results folder")
        check_folder_kind(out, FOLDER_KIND)


def run(args) -> int:
    from ..report.compare import compare

    check_workers(args.workers)
    modes = parse_modes(args.modes)
    check_out(args.out)
    cfg = config_from_args(args)
    with sigterm_as_interrupt():
        comp = compare(args.traces, modes=modes, policy=args.policy, config=cfg,
                       workers=args.workers, progress=not args.quiet, command=command_line())
    finish(comp, args.out, args.quiet)
    return 0
