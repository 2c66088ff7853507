"""memvirt workloads: the real-program suite (list, capture, info, path).

    memvirt workloads list [--quick] [--json | --markdown] [--simulate]
    memvirt workloads capture [NAME...] [--quick] [--force] [--no-stats]
    memvirt workloads info NAME [--quick] [--json]
    memvirt workloads path NAME [--quick]
"""

from __future__ import annotations

import json
import sys
import time

from ..errors import MemvirtError

NAME = "workloads"
HELP = ("the real-program suite: list it, capture it (cached by content), show a capture's "
        "statistics or its path")


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="workloads_command", metavar="SUBCOMMAND")
    ls = sub.add_parser("list", help="the suite with each workload's status and statistics")
    ls.add_argument("--quick", action="store_true", help="the short variants")
    fmt = ls.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--markdown", action="store_true",
                     help="print a Markdown table (with capture time and Parquet size)")
    ls.add_argument("--simulate", action="store_true",
                    help="run the native simulation of captured workloads whose rates are "
                    "not cached yet")
    ls.add_argument("--workers", type=int, default=None, metavar="N",
                    help="parallel simulations with --simulate (default: min(2, CPUs))")
    cap = sub.add_parser("capture", help="capture workloads (all when none is named)")
    cap.add_argument("names", nargs="*", metavar="NAME", help="workloads to capture")
    cap.add_argument("--quick", action="store_true",
                     help="the short variants (10^7 - 10^8 instructions)")
    cap.add_argument("--force", action="store_true", help="capture again even if cached")
    cap.add_argument("--no-stats", action="store_true",
                     help="skip the native simulation behind the list's TLB/fault rates")
    info = sub.add_parser("info", help="a workload's definition, capture metadata and "
                          "statistics")
    info.add_argument("name", metavar="NAME")
    info.add_argument("--quick", action="store_true", help="the short variant")
    info.add_argument("--json", action="store_true", help="print JSON")
    path = sub.add_parser("path", help="print the cached trace's path (capturing first if "
                          "needed)")
    path.add_argument("name", metavar="NAME")
    path.add_argument("--quick", action="store_true", help="the short variant")
    p.set_defaults(_workloads_parser=p)


def run(args) -> int:
    cmd = getattr(args, "workloads_command", None)
    if cmd is None:
        args._workloads_parser.print_help(sys.stderr)
        return 2
    return {"list": _list, "capture": _capture, "info": _info, "path": _path}[cmd](args)


# ----------------------------------------------------------------------------- list
def _fmt_int(v) -> str:
    return f"{v:,}" if isinstance(v, int) else "-"


def _fmt_rate(v) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "-"


def _state(st: dict) -> str:
    if st["captured"]:
        return "captured"
    if st["missing"]:
        return "missing " + ", ".join(m.split(" (")[0] for m in st["missing"])
    return "not captured"


def _simulated(job: tuple[str, bool]) -> dict:
    from .. import workloads as wl

    return wl.stats(job[0], job[1], capture=False)


def _rows(quick: bool, simulate: bool, workers: int | None = None) -> list[dict]:
    from .. import workloads as wl

    rows = [wl.status(name, quick) for name in wl.suite()]
    todo = [r["name"] for r in rows if simulate and r["captured"]
            and "tlb_misses_per_ki" not in r]
    if todo:
        import os
        from concurrent.futures import ProcessPoolExecutor

        n = max(1, min(workers or min(2, os.cpu_count() or 1), len(todo)))
        if n == 1:
            done = [_simulated((name, quick)) for name in todo]
        else:
            with ProcessPoolExecutor(n) as ex:
                done = list(ex.map(_simulated, [(name, quick) for name in todo]))
        by = {d["name"]: d for d in done}
        rows = [by.get(r["name"], r) for r in rows]
    return rows


def _list(args) -> int:
    from ._common import check_workers

    check_workers(args.workers)
    rows = _rows(args.quick, args.simulate, args.workers)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if args.markdown:
        sys.stdout.write(markdown_table(rows))
        return 0
    from rich.console import Console
    from rich.table import Table

    from .. import workloads as wl

    t = Table(title=f"memvirt workloads{' (quick variants)' if args.quick else ''}")
    for col, just in (("name", "left"), ("kind", "left"), ("status", "left"),
                      ("instructions", "right"), ("MiB", "right"), ("procs", "right"),
                      ("TLB miss/KI", "right"), ("faults/KI", "right")):
        t.add_column(col, justify=just, no_wrap=col in ("name", "status", "instructions"))
    for st in rows:
        t.add_row(st["name"], st["category"], _state(st), _fmt_int(st.get("instructions")),
                  f"{st['footprint_mib']:,.1f}" if "footprint_mib" in st else "-",
                  _fmt_int(st.get("processes")), _fmt_rate(st.get("tlb_misses_per_ki")),
                  _fmt_rate(st.get("guest_faults_per_ki")))
    con = Console()
    con.print(t)
    con.print(f"rates: native simulation, {wl.STATS_PROFILE} profile, "
              f"{wl.STATS_LEVELS}-level guest; cache: {wl.cache_root()}")
    return 0


def markdown_table(rows: list[dict]) -> str:
    """The list as a Markdown table (what docs/workloads-real.md shows)."""
    head = ("| workload | kind | instructions | records | footprint (MiB) | processes | "
            "TLB misses/KI | faults/KI | capture (s) | Parquet (MiB) |")
    out = [head, "|" + "---|" * 10]
    for st in rows:
        if not st["captured"]:
            out.append(f"| {st['name']} | {st['category']} | ({_state(st)}) |"
                       + " |" * 7)
            continue
        cap = st.get("capture_seconds")
        out.append(
            f"| {st['name']} | {st['category']} | {st['instructions']:,} | "
            f"{st['records']:,} | {st['footprint_mib']:,.1f} | {st['processes']:,} | "
            f"{_fmt_rate(st.get('tlb_misses_per_ki'))} | "
            f"{_fmt_rate(st.get('guest_faults_per_ki'))} | "
            f"{f'{cap:,.0f}' if isinstance(cap, (int, float)) else '-'} | "
            f"{st['parquet_bytes'] / 2**20:,.0f} |")
    total = [st for st in rows if st["captured"]]
    if total:
        secs = [st.get("capture_seconds") or 0 for st in total]
        out.append(f"| total ({len(total)}) | | "
                   f"{sum(st['instructions'] for st in total):,} | "
                   f"{sum(st['records'] for st in total):,} | | | | | {sum(secs):,.0f} | "
                   f"{sum(st['parquet_bytes'] for st in total) / 2**20:,.0f} |")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- capture
class _Display:
    """Progress of one capture: a live line on a terminal, a line every 15 s otherwise."""

    def __init__(self):
        from rich.console import Console

        self.con = Console(stderr=True)
        self.live = self.con.is_terminal
        self.prog = None
        self.task = None
        self._last = 0.0

    def __enter__(self):
        if self.live:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.prog = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=self.con, transient=True)
            self.prog.__enter__()
            self.task = self.prog.add_task("")
        return self

    def __exit__(self, *exc):
        if self.prog is not None:
            self.prog.__exit__(*exc)

    def __call__(self, d: dict) -> None:
        phase = d.get("phase")
        if phase == "capture":
            eta = d.get("eta")
            if eta is not None:
                eta_s = f"ETA {int(eta) // 60}:{int(eta) % 60:02d}"
            elif d["instructions"] >= d["expected"]:
                eta_s = "past the expected length"
            else:
                eta_s = "ETA ?"
            text = (f"{d['workload']}: {d['instructions']:,} instructions "
                    f"({d['rate'] / 1e6:.1f} M/s), {d.get('processes', 0)} processes, "
                    f"{eta_s} (expected ~{d['expected']:.2g})")
        elif phase == "input":
            text = f"{d['workload']}: generating the input"
        elif phase == "simulate":
            text = f"{d['workload']}: native simulation (TLB misses, faults)"
        else:
            return
        if self.prog is not None:
            self.prog.update(self.task, description=text)
        elif phase != "capture" or time.monotonic() - self._last >= 15:
            self._last = time.monotonic()
            self.say(text)

    def say(self, text: str) -> None:
        """One line on stderr, never wrapped (logs are read by scripts too)."""
        self.con.print(text, highlight=False, soft_wrap=True)


def _capture(args) -> int:
    from .. import workloads as wl

    names = list(args.names)
    for n in names:
        wl.get(n)  # unknown names fail before anything runs
    explicit = bool(names)
    names = names or list(wl.suite())
    failed = []
    t_all = time.monotonic()
    with _Display() as show:
        for name in names:
            w = wl.get(name)
            if not explicit and wl.missing(w):
                show.say(f"{name}: skipped: missing {'; '.join(wl.missing(w))} "
                         "(make workloads-deps)")
                failed.append(name)
                continue
            t0 = time.monotonic()
            try:
                if args.force:
                    wl.ensure(name, args.quick, show, force=True)
                if args.no_stats:
                    path = wl.ensure(name, args.quick, show)
                    st = wl.status(name, args.quick)
                else:
                    st = wl.stats(name, args.quick, show)
                    path = st["path"]
            except MemvirtError as e:
                if explicit and len(names) == 1:
                    _print_tail(e)
                    raise
                _print_tail(e)
                show.say(f"{name}: failed: {e}")
                failed.append(name)
                continue
            took = time.monotonic() - t0
            rates = ""
            if "tlb_misses_per_ki" in st:
                rates = (f", {st['tlb_misses_per_ki']:.3f} TLB misses/KI, "
                         f"{st['guest_faults_per_ki']:.3f} faults/KI")
            show.say(f"{name}: {st['instructions']:,} instructions, "
                     f"{st['processes']} processes, {st['footprint_mib']:,.1f} MiB"
                     f"{rates} ({took:,.0f} s) -> {path}")
    show.say(f"{len(names) - len(failed)} of {len(names)} workloads ready in "
             f"{time.monotonic() - t_all:,.0f} s")
    return 1 if failed else 0


def _print_tail(e: Exception) -> None:
    tail = getattr(e, "tail", None)
    if tail:
        print("--- last lines of the program's output ---", file=sys.stderr)
        for line in tail:
            print(line, file=sys.stderr)
        print("---", file=sys.stderr)


# ----------------------------------------------------------------------------- info, path
def _info(args) -> int:
    from .. import workloads as wl

    w = wl.get(args.name)
    v = w.variant(args.quick)
    st = wl.status(args.name, args.quick)
    d = {"name": w.name, "category": w.category, "description": w.description,
         "stresses": w.stresses, "variant": "quick" if args.quick else "full",
         "command": list(w.command), "env": {**wl.BASE_ENV, **w.env},
         "params": dict(v.params), "expected_instructions": list(v.instructions),
         "debian": list(w.debian), "pypi": list(w.pypi), "input": wl.input_manifest(
             args.name, args.quick), "status": st}
    if st["captured"]:
        from ..trace.base import open_trace

        meta = dict(open_trace(st["path"]).meta)
        d["trace_meta"] = {k: meta[k] for k in (
            "command", "capture_date", "tools", "exit_status", "switches", "collapse",
            "sync_instructions", "slice_instructions", "cache_key", "input_hash",
            "tools_versions", "counts", "accesses") if k in meta}
    if args.json:
        json.dump(d, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title=f"workload {w.name}{' (quick)' if args.quick else ''}",
              show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row("category", w.category)
    t.add_row("description", w.description)
    t.add_row("stresses", w.stresses)
    t.add_row("command", " ".join(w.command))
    t.add_row("parameters", ", ".join(f"{k}={v}" for k, v in v.params.items()))
    t.add_row("packages", ", ".join([*(f"Debian {p}" for p in w.debian),
                                      *(f"PyPI {p}" for p in w.pypi)]))
    lo, hi = v.instructions
    t.add_row("expected instructions", f"{lo:,} - {hi:,}")
    t.add_row("status", _state(st))
    if st["captured"]:
        t.add_row("trace", st["path"])
        t.add_row("instructions", f"{st['instructions']:,}")
        t.add_row("records", f"{st['records']:,}")
        t.add_row("accesses", f"{st['accesses']:,}")
        t.add_row("processes", f"{st['processes']:,}")
        t.add_row("footprint", f"{st['footprint_pages']:,} pages ({st['footprint_mib']:,.1f}"
                  " MiB)")
        t.add_row("Parquet size", f"{st['parquet_bytes'] / 2**20:,.1f} MiB")
        if "capture_seconds" in st:
            t.add_row("capture time", f"{st['capture_seconds']:,.1f} s")
        if "tlb_misses_per_ki" in st:
            t.add_row("TLB misses / 1,000 instructions", _fmt_rate(st["tlb_misses_per_ki"]))
            t.add_row("guest faults / 1,000 instructions",
                      _fmt_rate(st["guest_faults_per_ki"]))
        for k in ("capture_date", "exit_status", "switches"):
            if k in d["trace_meta"]:
                t.add_row(k.replace("_", " "), str(d["trace_meta"][k]))
    con.print(t)
    return 0


def _path(args) -> int:
    from .. import workloads as wl

    wl.get(args.name)
    path = wl.trace_path(args.name, args.quick)
    if path is None:
        with _Display() as show:
            path = wl.ensure(args.name, args.quick, show)
    print(path)
    return 0
