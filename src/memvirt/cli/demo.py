"""memvirt demo: the built-in workload suite under every mode, with plots and a report."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import MemvirtError
from ._common import add_config_args, check_workers, config_from_args, sigterm_as_interrupt

NAME = "demo"
HELP = ("synthesize the built-in workloads, compare native/shadow/nested/selective paging, "
        "and write results, plots and report.html")

# Sampling period at scale 1.0: the suite's phases last ~12 M instructions, so a policy
# needs periods well below that to follow them (see trace/synth/suite.py).
PERIOD_AT_SCALE_1 = 1_000_000


def add_arguments(p) -> None:
    p.add_argument("--out", default="demo-out", metavar="DIR",
                   help="output directory (default: demo-out)")
    p.add_argument("--scale", type=float, default=1.0, metavar="S",
                   help="workload size factor (default 1.0: about 4.5 M records each; "
                   "0.05 is a quick look)")
    p.add_argument("--policy", default="dsp", help="selective-mode policy (default: dsp)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="parallel processes (default: number of CPUs)")
    add_config_args(p)
    p.add_argument("--quiet", action="store_true",
                   help="no progress and no tables: only where the report is")


def demo_config(args):
    """The user's configuration, with a sampling period scaled to the suite unless the
    user chose one."""
    from ..config import SelectiveConfig

    cfg = config_from_args(args)
    chosen = any(o.split("=", 1)[0].strip() == "selective.period_instructions"
                 for o in args.overrides)
    default = SelectiveConfig.model_fields["period_instructions"].default
    if not chosen and cfg.selective.period_instructions == default:
        period = max(1000, int(round(PERIOD_AT_SCALE_1 * args.scale, -3)))
        cfg = cfg.with_overrides({"selective.period_instructions": period})
    return cfg


def run(args) -> int:
    from ..report.compare import ALL_MODES, compare
    from ..trace.synth.suite import default_suite
    from .compare import check_out, command_line, finish

    if not args.scale > 0:
        raise MemvirtError(f"--scale must be > 0, got {args.scale}")
    check_workers(args.workers)
    check_out(args.out)
    t0 = time.perf_counter()
    cfg = demo_config(args)
    suite = default_suite(args.scale)
    if not args.quiet:
        print(f"memvirt demo: {len(suite)} workloads ({', '.join(suite)}) x "
              f"{len(ALL_MODES)} modes, scale {args.scale:g}, selective policy {args.policy}, "
              f"sampling period {cfg.selective.period_instructions:,} instructions "
              "(a first run also compiles the simulator: allow a minute more)")
    with sigterm_as_interrupt():
        comp = compare({name: {"generator": e["generator"], "params": e["params"]}
                        for name, e in suite.items()},
                       modes=ALL_MODES, policy=args.policy, config=cfg, workers=args.workers,
                       progress=not args.quiet, command=command_line())
    for t in comp.meta["traces"]:
        t["description"] = suite.get(t["name"], {}).get("description", "")
    report = finish(comp, args.out, args.quiet)
    if not args.quiet:
        print(f"done in {time.perf_counter() - t0:.0f} s; open {Path(report).resolve()} "
              "in a browser")
    return 0
