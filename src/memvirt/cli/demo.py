"""memvirt demo: the demo subset of the realistic suite under every mode, with plots and a
report.

The workloads are ``trace.synth.suite.demo_suite``: the SPEC-like stand-ins (rates inside
what the selective-paging study measured on SPEC CPU2006) with their full-length footprints
and rates but shorter, after a warm-up that is not counted, on the study's machine and
guest (nehalem-2010, 2-level), selective paging sampled as the experiments do.  Their
steady-state verdicts are those of the full-length runs (``memvirt experiment realistic``;
tests/test_demo_subset.py holds them to it)."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import MemvirtError
from ._common import add_config_args, check_workers, config_from_args, sigterm_as_interrupt

NAME = "demo"
HELP = ("synthesize the demo workloads (SPEC-like stand-ins and microbenchmarks), compare "
        "native/shadow/nested/selective paging, and write results, plots and report.html")


def add_arguments(p) -> None:
    p.add_argument("--out", default="demo-out", metavar="DIR",
                   help="output directory (default: demo-out)")
    p.add_argument("--scale", type=float, default=1.0, metavar="S",
                   help="length factor of the SPEC-like workloads (default 1.0: 1.2 x 10^8 "
                   "instructions each, half of them warm-up; footprints and rates do not "
                   "change)")
    p.add_argument("--policy", default="dsp", help="selective-mode policy (default: dsp)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="parallel processes (default: number of CPUs)")
    add_config_args(p)
    p.add_argument("--quiet", action="store_true",
                   help="no progress and no tables: only where the report is")


def demo_config(args):
    """The user's configuration, on the demo's machine and guest (nehalem-2010, 2-level),
    with its warm-up and the experiments' sampling period and dsp window unless the user
    chose them."""
    from ..trace.synth.suite import (
        DEMO_LEVELS,
        DEMO_PROFILE,
        DEMO_WARMUP,
        POLICY_PERIOD,
        POLICY_WINDOW,
    )

    chosen = {o.split("=", 1)[0].strip() for o in args.overrides}
    if args.profile is None and getattr(args, "config", None) is None:
        args.profile = DEMO_PROFILE
    extra = []
    if "guest.levels" not in chosen:
        extra.append(f"guest.levels={DEMO_LEVELS}")
    if "run.warmup_instructions" not in chosen and \
            getattr(args, "warmup_instructions", None) is None:
        # a shorter demo (--scale below 1) keeps the same share of warm-up
        scale = min(1.0, float(getattr(args, "scale", 1.0)))
        extra.append(f"run.warmup_instructions={int(DEMO_WARMUP * scale)}")
    if "selective.period_instructions" not in chosen:
        extra.append(f"selective.period_instructions={POLICY_PERIOD}")
    if getattr(args, "policy", "dsp") == "dsp" and not any(
            k.startswith("selective.policy_params") for k in chosen):
        extra.append(f"selective.policy_params.window={POLICY_WINDOW}")
    args.overrides = extra + list(args.overrides)
    return config_from_args(args)


def run(args) -> int:
    from ..report.compare import ALL_MODES, compare
    from ..trace.synth.suite import demo_suite
    from .compare import check_out, command_line, finish

    if not args.scale > 0:
        raise MemvirtError(f"--scale must be > 0, got {args.scale}")
    check_workers(args.workers)
    check_out(args.out)
    t0 = time.perf_counter()
    cfg = demo_config(args)
    suite = demo_suite(args.scale)
    if not args.quiet:
        n_instr = next(iter(suite.values()))["params"]["instructions"]
        window = cfg.selective.policy_params.get("window")
        print(f"memvirt demo: {len(suite)} SPEC-like workloads ({', '.join(suite)}), "
              f"{n_instr:,} instructions each, x {len(ALL_MODES)} modes on the "
              f"{args.profile or 'default'} machine with a {cfg.guest.levels}-level guest; "
              f"figures are steady state after a warm-up of {cfg.run.warmup_instructions:,} "
              f"instructions (the whole run beside them); selective policy {args.policy}, "
              f"sampling period {cfg.selective.period_instructions:,} instructions"
              + (f", window {window:,}" if window else "")
              + ".  Full-length runs: memvirt experiment realistic (a first run also "
              "compiles the simulator: allow a minute more)")
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
