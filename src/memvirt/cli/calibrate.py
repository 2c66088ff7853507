"""memvirt calibrate: the marginal cost of one event under shadow versus nested paging."""

from __future__ import annotations

import sys

NAME = "calibrate"
HELP = ("measure what a TLB miss, a guest page fault, a context switch and a fork cost under "
        "shadow and nested paging, next to the published figures")
DEFAULT_PROFILE = "nehalem-2010"


def add_arguments(p) -> None:
    p.add_argument("--config", metavar="FILE.toml", help="configuration file (TOML)")
    p.add_argument("--profile", metavar="NAME", default=None,
                   help=f"machine profile (default {DEFAULT_PROFILE} unless --config is given)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override one config key (repeatable)")
    p.add_argument("--levels", type=int, nargs="+", default=[2], metavar="N",
                   help="guest page-table levels to measure with (default 2: the study's "
                   "32-bit guests; e.g. --levels 2 4)")
    p.add_argument("--events", default="tlb_miss,tlb_miss_large,tlb_miss_mcf,guest_fault,context_switch,fork",
                   help="comma-separated events (default: all five)")
    p.add_argument("--sweep", action="store_true",
                   help="also show the TLB-miss premium against the footprint (4-256 MiB)")
    p.add_argument("--json", nargs="?", const="-", metavar="OUT",
                   help="write the measurements as JSON to OUT (default: stdout)")
    p.add_argument("--check", action="store_true",
                   help="exit with status 1 unless every published figure is matched "
                   "within 15%%")


def run(args) -> int:
    from rich.console import Console

    from ..config import Config
    from ..errors import MemvirtError
    from ..experiments import calibrate as cal
    from ..fileio import atomic_write_text, check_output_path, dumps_json

    if args.json and args.json != "-":
        check_output_path(args.json, what="JSON output")  # before measuring
    profile = args.profile or (None if args.config else DEFAULT_PROFILE)
    cfg = Config.load(args.config, overrides=args.overrides, profile=profile)
    events = [e.strip() for e in args.events.split(",") if e.strip()]
    for e in events:
        if e not in cal.WORKLOADS:
            raise MemvirtError(f"--events: unknown event '{e}'; known: {', '.join(cal.WORKLOADS)}")
    for lv in args.levels:
        if lv not in (2, 3, 4, 5):
            raise MemvirtError(f"--levels: {lv} is not 2, 3, 4 or 5")
    results = [cal.measure(e, cfg, lv) for lv in args.levels for e in events]
    sweep = {}
    if args.sweep:
        sweep = {lv: cal.footprint_sweep(cfg, lv) for lv in args.levels}
    data = {
        "profile": profile, "config": args.config, "overrides": args.overrides,
        "clock_ghz": cfg.cost.clock_ghz, "tolerance": cal.TOLERANCE,
        "results": [m.to_dict() for m in results],
        "tlb_miss_footprint_sweep": {str(lv): [{"footprint_mib": f, "marginal_cycles": m}
                                               for f, m in rows] for lv, rows in sweep.items()},
    }
    if args.json:
        text = dumps_json(data, what="the measurements", indent=2)
        if args.json == "-":
            sys.stdout.write(text + "\n")
        else:
            atomic_write_text(args.json, text + "\n", "JSON output")
    if args.json != "-":
        con = Console()
        title = f"memvirt calibrate: {profile or args.config or 'defaults'}"
        if args.overrides:
            title += " " + " ".join(args.overrides)
        con.print(cal.render(results, title=title))
        for lv, rows in sweep.items():
            con.print(f"TLB-miss premium (nested - shadow) by footprint, {lv}-level guest: "
                      + ", ".join(f"{f:g} MiB {m:.1f}" for f, m in rows))
    if args.check and any(m.within_tolerance is False for m in results):
        return 1
    return 0
