"""memvirt report: redraw plots, tables and the HTML report from a results directory."""

from __future__ import annotations

from pathlib import Path

from ..errors import MemvirtError

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
    from ..fileio import check_output_path
    from ..report.html import write_report
    from ..report.load import load_results, results_path
    from ..report.plots import plot_all
    from .compare import status

    src = results_path(args.dir)  # a clear error if DIR holds no results
    data = load_results(src)  # ... or damaged ones
    folder = src.parent
    out = Path(args.output) if args.output else folder / "report.html"
    check_output_path(out, what="HTML report")
    if not args.no_png:
        check_output_path(folder, is_dir=True, what="plots folder")
    try:
        with status("drawing plots and writing the report", args.quiet):
            if not args.no_png:
                plot_all(data, folder)
            out = write_report(src, out, plots_dir=None if args.no_png else folder)
        if not args.quiet:
            from ..report.tables import print_tables

            print_tables(data)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError) as e:
        # load_results checks the structure; this catches what a hand-edited file can
        # still get wrong (inconsistent values), instead of a traceback from a plot.
        raise MemvirtError(f"{src}: damaged or edited results file: cannot draw from it "
                           f"({type(e).__name__}: {e})") from None
    print(f"report: {out}")
    return 0
