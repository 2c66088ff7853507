"""``memvirt sweep SPEC.toml``: run a parameter sweep (resumable), show its status,
export it, or plot one metric against one swept parameter."""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from ..errors import MemvirtError
from ._common import check_workers, sigterm_as_interrupt

NAME = "sweep"
HELP = ("run a parameter sweep from a TOML spec on all local cores or a Dask cluster "
        "(resumable; see docs/sweeps.md)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC.toml", help="the sweep spec")
    p.add_argument("--out", metavar="DIR",
                   help="output folder holding the result store (default: the spec's 'out', "
                        "else SPEC-sweep in the current directory)")
    be = p.add_mutually_exclusive_group()
    be.add_argument("--workers", type=int, metavar="N",
                    help="local process pool size (default: every core)")
    be.add_argument("--scheduler", metavar="ADDRESS",
                    help="run on an existing Dask cluster, e.g. tcp://host:8786")
    be.add_argument("--dask-local", type=int, metavar="N",
                    help="start a Dask LocalCluster of N single-threaded workers")
    be.add_argument("--serial", action="store_true",
                    help="run in this process, one run at a time (debugging)")
    p.add_argument("--ship", choices=("auto", "always", "never"), default="auto",
                   help="Dask: send trace files to workers that do not see them by path "
                        "(auto), always, or never (default: auto)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run the runs recorded as failed again")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--status", action="store_true",
                     help="print how many runs are done/running/failed/pending and exit")
    act.add_argument("--export", action="store_true",
                     help="write results.parquet and results.csv from the store and exit")
    act.add_argument("--plot", metavar="METRIC",
                     help="plot METRIC (cycles, time_s, tlb_misses_per_ki, guest_faults_per_ki, "
                          "vm_exits_total, walks, walk_refs, any column of the compare rows, "
                          "or a dotted path into the result JSON) against --x, one line per "
                          "mode; writes a PNG into the out folder")
    p.add_argument("--x", metavar="PARAM", help="the swept parameter for --plot's x axis")
    p.add_argument("--max-runs", type=int, metavar="N", default=None,
                   help="refuse specs that expand to more than N runs (default: the spec's "
                        "max_runs, else 100000)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")


def run(args) -> int:
    from ..sweep.runner import default_out
    from ..sweep.spec import load_spec

    check_workers(args.workers)
    if args.dask_local is not None:
        check_workers(args.dask_local, "--dask-local")
    if args.max_runs is not None and args.max_runs < 1:
        raise MemvirtError(f"--max-runs must be at least 1, got {args.max_runs}")
    if args.x and not args.plot:
        raise MemvirtError("--x goes with --plot METRIC")
    if args.scheduler is not None:
        from ..sweep.backends import check_scheduler_address

        check_scheduler_address(args.scheduler)
    spec = load_spec(args.spec, max_runs=args.max_runs)
    out = Path(args.out) if args.out else default_out(spec)
    if args.status:
        return _status(spec, out)
    if args.export:
        return _export(spec, out, args.quiet)
    if args.plot:
        if not args.x:
            raise MemvirtError("--plot needs --x PARAM (one of the swept parameters: "
                               f"{', '.join(spec.swept_keys) or 'none'})")
        png, _ = plot_sweep(spec, out, args.plot, args.x, echo=not args.quiet)
        if not args.quiet:
            print(f"wrote {png}")
        return 0
    return _run(spec, out, args)


# ---------------------------------------------------------------------- run


def _run(spec, out: Path, args) -> int:
    # SIGTERM stops the sweep like Ctrl-C: workers stopped, runs in flight back to pending
    with sigterm_as_interrupt():
        return _run_sweep(spec, out, args)


def _run_sweep(spec, out: Path, args) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ..sweep.runner import run_sweep

    err = Console(stderr=True)
    log = (lambda s: None) if args.quiet else (lambda s: err.print(f"[dim]{s}[/dim]"))
    kw = dict(workers=args.workers, scheduler=args.scheduler, dask_local=args.dask_local,
              serial=args.serial, ship=args.ship, retry_failed=args.retry_failed, log=log,
              quiet=args.quiet)
    if args.quiet:
        report = run_sweep(spec, out, **kw)
    else:
        with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                      MofNCompleteColumn(),
                      TextColumn("[green]{task.fields[done]} done[/] "
                                 "[red]{task.fields[failed]} failed[/] "
                                 "{task.fields[running]} running"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=err,
                      transient=False) as prog:
            tid = prog.add_task(spec.name or "sweep", total=None, done=0, failed=0, running=0)

            def progress(c: dict) -> None:
                prog.update(tid, total=c["total"], completed=c["done"] + c["failed"],
                            done=c["done"], failed=c["failed"], running=c["running"])

            report = run_sweep(spec, out, progress=progress, **kw)
    c = report.counts
    if not args.quiet:
        err.print(f"{report.total} runs: {c['done']} done, {c['failed']} failed, "
                  f"{c['pending']} pending ({report.ran} run now, {report.skipped} already "
                  f"finished) in {report.elapsed_s:.1f} s; results in {out}")
        for f in report.failed[:10]:
            err.print(f"[red]failed[/red] {f['label']}: {_first_line(f['error'])}")
        if len(report.failed) > 10:
            err.print(f"... and {len(report.failed) - 10} more (memvirt sweep {spec.path} "
                      "--status)")
        for p in report.exports:
            err.print(f"wrote {p}")
    elif c["failed"]:
        print(f"memvirt sweep: {c['failed']} run(s) failed; see --status", file=sys.stderr)
    return 1 if c["failed"] else 0


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if text else ""


# ---------------------------------------------------------------------- status / export


def _status(spec, out: Path) -> int:
    from ..sweep.runner import sweep_status

    st = sweep_status(spec, out)
    c = st["counts"]
    print(f"sweep {spec.name or spec.path}: {st['total']} runs in {out}"
          + ("" if st["driver_alive"] else " (no driver running)"))
    for k in ("done", "running", "failed", "pending"):
        print(f"  {k:<8} {c[k]:>7}")
    for f in st["failed"][:20]:
        print(f"  failed: {f['label']}: {_first_line(f['error'])}")
    if len(st["failed"]) > 20:
        print(f"  ... and {len(st['failed']) - 20} more (see the 'error' column of "
              "results.csv)")
    if st["failed"]:
        print("  (run again with --retry-failed to retry the failed runs)")
    return 0


def _export(spec, out: Path, quiet: bool) -> int:
    from ..sweep.runner import check_out, export_results
    from ..sweep.store import STORE_FILE, Store

    if not (out / STORE_FILE).exists():
        raise MemvirtError(f"{out}: no sweep results here (run the sweep first)")
    check_out(out)
    store = Store(out, create=False)
    try:
        paths = export_results(store, spec, out)
    finally:
        store.close()
    if not quiet:
        for p in paths:
            print(f"wrote {p}")
    return 0


# ---------------------------------------------------------------------- plot


def _sortable(v):
    if isinstance(v, bool):
        return (0, int(v), "")
    if isinstance(v, int | float):
        return (0, v, "")
    return (1, 0, str(v))


def plot_sweep(spec, out: str | Path | None, metric: str, x: str, *, echo: bool = True
               ) -> tuple[Path, list[dict]]:
    """Plot ``metric`` of the done runs against swept parameter ``x``: one panel per trace,
    one line per mode (and per value of the other swept parameters).  Writes
    ``<out>/<metric>-vs-<x>.png``, prints a table (lines x values of ``x``) when ``echo``,
    and returns the PNG path and the table rows."""
    from ..fileio import atomic_path
    from ..sweep.runner import check_out, default_out, sweep_rows
    from ..sweep.spec import SweepSpec, load_spec
    from ..sweep.store import metric_value

    spec = spec if isinstance(spec, SweepSpec) else load_spec(spec)
    out = Path(out) if out is not None else default_out(spec)
    if x not in spec.swept_keys:
        raise MemvirtError(f"--x '{x}' is not a swept parameter of {spec.path or 'the spec'}; "
                           f"swept: {', '.join(spec.swept_keys) or 'none'}")
    check_out(out)
    rows = sweep_rows(spec, out, status="done")
    if not rows:
        raise MemvirtError(f"{out}: no finished runs to plot yet")
    others = [k for k in spec.swept_keys if k != x]
    lines: dict[tuple, dict] = {}
    xs: list = []
    for r in rows:
        xv = r["params"][x]
        if xv not in xs:
            xs.append(xv)
        mp = r["mode"] + (f"/{r['policy']}" if r.get("policy") else "")
        rest = tuple((k, r["params"].get(k)) for k in others)
        line = lines.setdefault((r["trace"], mp, rest), {})
        line[_hkey(xv)] = metric_value(r, metric)
    xs.sort(key=_sortable)
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in xs)
    table = []
    for (trace, mp, rest), vals in lines.items():
        row = {"trace": trace, "mode": mp, **dict(rest)}
        for xv in xs:
            row[str(xv)] = vals.get(_hkey(xv))
        table.append(row)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(dict.fromkeys(t for t, _, _ in lines))
    ncol = min(3, len(traces))
    nrow = math.ceil(len(traces) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.5 * ncol, 4 * nrow), squeeze=False)
    for i, trace in enumerate(traces):
        ax = axes[i // ncol][i % ncol]
        for (t, mp, rest), vals in lines.items():
            if t != trace:
                continue
            pts = [(xv, vals[_hkey(xv)]) for xv in xs if vals.get(_hkey(xv)) is not None]
            if not pts:
                continue
            px = [p[0] if numeric else xs.index(p[0]) for p in pts]
            label = mp + "".join(f", {k}={v}" for k, v in rest)
            ax.plot(px, [p[1] for p in pts], marker="o", label=label)
        if numeric and len(xs) > 2 and min(xs) > 0 and max(xs) / min(xs) >= 16:
            ax.set_xscale("log", base=2)
        if not numeric:
            ax.set_xticks(range(len(xs)), [str(v) for v in xs])
        ax.set_title(trace)
        ax.set_xlabel(x)
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    for j in range(len(traces), nrow * ncol):
        axes[j // ncol][j % ncol].set_visible(False)
    fig.suptitle(f"{spec.name or 'sweep'}: {metric} vs {x}")
    fig.tight_layout()
    png = out / f"{_slug(metric)}-vs-{_slug(x)}.png"
    try:
        with atomic_path(png, "plot") as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)

    if echo:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"{metric}; columns: {x}")
        for c in ["trace", "mode", *others]:
            t.add_column(c)
        for xv in xs:
            t.add_column(str(xv), justify="right")
        for row in table:
            t.add_row(*[str(row.get(c, "")) for c in ["trace", "mode", *others]],
                      *[_fmt(row[str(xv)]) for xv in xs])
        Console().print(t)
    return png, table


def _hkey(v):
    return (type(v).__name__, repr(v))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)
