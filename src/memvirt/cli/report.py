"""memvirt report: redraw plots, tables and the HTML report from a results directory."""

from __future__ import annotations

from pathlib import Path

NAME = "report"
HELP = "write a self-contained HTML report (and the plots) from a results directory"


def add_arguments(p) -> None:
    p.add_argument("dir", metavar="DIR", help="directory holding results.json "
                   "(from memvirt compare --out or memvirt demo)")
    p.add_argument("-o", "--output", metavar="HTML",
                   help="report file to write (default: DIR/report.html)")
    p.add_argument("--no-png", action="store_true",
                   help="do not (re)write the PNG plots into DIR")
    p.add_argument("--quiet", action="store_true", help="print only the report's path")


def run(args) -> int:
    from ..report.compare import load_results
    from ..report.html import write_report
    from ..report.plots import plot_all
    from .compare import status

    data = load_results(args.dir)  # a clear error if DIR holds no results
    with status("drawing plots and writing the report", args.quiet):
        if not args.no_png:
            plot_all(args.dir)
        out = write_report(args.dir, args.output or Path(args.dir) / "report.html",
                           plots_dir=None if args.no_png else args.dir)
    if not args.quiet:
        from ..report.tables import print_tables

        print_tables(data)
    print(f"report: {out}")
    return 0
