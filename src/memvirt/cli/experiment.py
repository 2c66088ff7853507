"""memvirt experiment: reproduce a published experiment end to end (tables, figures, JSON)."""

from __future__ import annotations

import time

NAME = "experiment"
HELP = ("run a packaged experiment: vee11 (shadow, nested and selective paging on 2- and "
        "4-level guests, after Wang et al., VEE 2011) or realistic (the real-program suite "
        "and the SPEC-like stand-ins at real lengths, steady state and whole run)")
EXPERIMENTS = ("vee11", "realistic")


def add_arguments(p) -> None:
    p.add_argument("name", choices=EXPERIMENTS, help="the experiment")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default: ./NAME-results): JSON, PNG figures and "
                   "text tables")
    p.add_argument("--scale", type=float, default=1.0, metavar="S",
                   help="vee11: length factor of the SPEC-like workloads (default 1.0; "
                   "footprints and rates do not change)")
    p.add_argument("--quick", action="store_true",
                   help="the short variants: vee11 runs the demo's subset (SPEC-like "
                   "stand-ins at 1.2 x 10^8 instructions, no real programs: about a minute on "
                   "2 cores), realistic the real programs' quick captures")
    real = p.add_mutually_exclusive_group()
    real.add_argument("--real", dest="real", action="store_true", default=None,
                      help="include the real programs (memvirt workloads) even with --quick")
    real.add_argument("--no-real", dest="real", action="store_false",
                      help="leave the real programs (memvirt workloads) out")
    p.add_argument("--profile", metavar="NAME", default="nehalem-2010",
                   help="machine profile (default nehalem-2010)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override one config key (repeatable)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="parallel simulation processes (default: min(2, CPUs))")
    p.add_argument("--only", metavar="NAMES", default=None,
                   help="comma-separated workloads to run (default: all)")
    p.add_argument("--quiet", action="store_true", help="print only the written paths")
    p.add_argument("--levels", type=int, nargs="+", default=[2], metavar="N",
                   help="realistic: guest page-table levels (default 2, the study's guests)")
    p.add_argument("--capture", action="store_true",
                   help="capture the real programs that are not captured yet")
    p.add_argument("--agile", action="store_true",
                   help="realistic: agile paging too (needs --levels 4) and its table")
    p.add_argument("--markdown", action="store_true",
                   help="realistic: print the table as Markdown (what the docs quote)")


def run(args) -> int:
    from pathlib import Path

    from rich.console import Console

    from ..errors import MemvirtError
    from ..experiments import vee11
    from ..fileio import check_output_path
    from ._common import check_workers, sigterm_as_interrupt

    if not args.scale > 0:
        raise MemvirtError(f"--scale must be positive, got {args.scale}")
    check_workers(args.workers)
    con = Console()
    err = Console(stderr=True)
    out = Path(args.out or f"{args.name}-results")
    check_output_path(out, is_dir=True, what="experiment output folder")  # before the runs
    workers = args.workers or vee11.default_workers()
    only = [w.strip() for w in args.only.split(",")] if args.only else None

    def log(msg: str) -> None:
        if not args.quiet:
            err.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {msg}")

    if args.name == "realistic":
        return _realistic(args, out, workers, only, log, con)
    with sigterm_as_interrupt():
        res = vee11.run(out, scale=args.scale, quick=args.quick, real=args.real,
                        profile=args.profile, overrides=args.overrides, workers=workers,
                        workloads=only, capture=args.capture, log=log)
    if not args.quiet:
        con.print(vee11.table(res, wide=con.width >= 140))
        con.print(vee11.checks_table(res))
        t = res["timings"]
        con.print(f"time: {t['total_s']:.1f} s (simulation {t['simulate_s']:.1f} s"
                  + (f", captures {t['capture_s']:.1f} s" if "capture_s" in t else "") + ")")
    for p in res.get("outputs", []):
        con.print(f"wrote {p}")
    return 0


def _realistic(args, out, workers, only, log, con) -> int:
    import json

    from ..experiments import realistic
    from ..fileio import atomic_write_text
    from ._common import sigterm_as_interrupt

    with sigterm_as_interrupt():
        res = realistic.run(quick=args.quick, levels=tuple(args.levels), workers=workers,
                            capture=args.capture, real=args.real is not False, only=only,
                            log=log, agile=args.agile)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "realistic.json", json.dumps(res, indent=2) + "\n", "results")
    text = realistic.markdown(res)
    if args.agile:
        text += "\n" + realistic.agile_markdown(res)
    atomic_write_text(out / "realistic.md", text, "results")
    if not args.quiet:
        print(text, end="")
    con.print(f"wrote {out / 'realistic.json'}\nwrote {out / 'realistic.md'}")
    return 0
