"""memvirt run: replay one trace under one paging mode."""

from __future__ import annotations

import sys

from ..api import MODE_CHOICES
from ..errors import MemvirtError
from ._common import add_config_args, config_from_args, resolve_trace

NAME = "run"
HELP = "replay a trace under native, shadow, nested, selective or agile paging"


def add_arguments(p) -> None:
    p.add_argument("trace", help="trace file (parquet, lackey, champsim) or synth:NAME[:k=v,...]")
    p.add_argument("--mode", choices=MODE_CHOICES, default="native")
    p.add_argument("--policy", help="switching policy for --mode selective (dsp, cost, "
                   "static, oracle or module:Class), or agile policy for --mode agile (paper, "
                   "all-shadow, all-nested or module:Class)")
    p.add_argument("--format", help="trace format if it cannot be detected")
    add_config_args(p)
    p.add_argument("--json", metavar="OUT", help="write the result as JSON ('-' for stdout)")
    p.add_argument("--no-samples", action="store_true", help="leave per-period samples out of JSON")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def run(args) -> int:
    from ..fileio import atomic_write_text, check_output_path, dumps_json

    if args.policy is not None and args.mode not in ("selective", "agile"):
        raise MemvirtError(f"--policy {args.policy} only applies to --mode selective or agile "
                           f"(the mode is {args.mode})")
    if args.json and args.json != "-":
        check_output_path(args.json, what="JSON result")  # before minutes of simulation
    cfg = config_from_args(args)
    if args.mode == "agile":
        from ..api import check_agile
        from ..policy.agile import make_agile_policy

        check_agile(cfg)
        make_agile_policy(args.policy, cfg)  # a bad name or plug-in: an error before the run
    elif cfg.agile.model_fields_set:
        raise MemvirtError(f"agile.{sorted(cfg.agile.model_fields_set)[0]} is set but the mode "
                           f"is {args.mode}: agile settings apply to --mode agile only")
    elif args.policy is not None:
        from ..policy import check_policy_name

        check_policy_name(args.policy)
    trace = resolve_trace(args.trace, cfg.run.memory_budget_fraction)
    if args.format and isinstance(trace, str):
        from ..trace.base import open_trace

        trace = open_trace(trace, args.format)
    res = _simulate_with_progress(trace, cfg, args)
    d = res.to_dict(samples=not args.no_samples)
    if args.json == "-":
        sys.stdout.write(dumps_json(d, indent=2) + "\n")
    elif args.json:
        atomic_write_text(args.json, dumps_json(d, what=f"{args.json}: the result", indent=2)
                          + "\n", "JSON result")
    if not args.quiet and args.json != "-":
        print_summary(d)
    return 0


def _simulate_with_progress(trace, cfg, args):
    """simulate() with a progress bar on an interactive terminal (records done)."""
    import sys as _sys

    from ..policy.oracle import needs_oracle_run, oracle_run
    from ..policy.oracle import simulate_with_oracle as simulate
    from ..trace.base import open_trace

    if needs_oracle_run(args.mode, args.policy, cfg):
        return oracle_run(trace, cfg)[1]  # three passes over the trace: no progress bar
    src = open_trace(trace)
    if args.quiet or not _sys.stderr.isatty():
        return simulate(src, cfg, args.mode, policy=args.policy)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    total = getattr(src, "num_records", None) or (len(src.trace) if hasattr(src, "trace")
                                                   else None)
    with Progress(TextColumn(f"simulating ({args.mode})"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=True) as prog:
        task = prog.add_task("run", total=total)
        return simulate(src, cfg, args.mode, policy=args.policy,
                        progress=lambda done: prog.update(task, completed=done))


def print_summary(d: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title=f"memvirt run: mode {d['mode']}" + (f", policy {d['policy']}"
                                                         if d.get("policy") else ""))
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("instructions", f"{d['instructions']:,}")
    t.add_row("accesses", f"{d['accesses']:,}")
    t.add_row("cycles", f"{d['cycles']:,.0f}")
    for k, v in d["cycles_breakdown"].items():
        if v:
            t.add_row(f"  {k}", f"{v:,.0f} ({100 * v / d['cycles']:.1f}%)")
    t.add_row("TLB misses / 1K instr", f"{d['rates']['tlb_misses_per_ki']:.3f}")
    t.add_row("walks", f"{d['walks']:,}")
    t.add_row("walk references", f"{d['walk_refs']:,}")
    t.add_row("guest page faults", f"{d['guest_page_faults']['total']:,}")
    t.add_row("VM exits", f"{d['vm_exits']['total']:,}")
    for k, v in d["vm_exits"]["by_reason"].items():
        if v:
            t.add_row(f"  {k}", f"{v:,}")
    if d.get("selective"):
        s = d["selective"]
        if s.get("is_bound"):
            t.add_row("NOTE", "oracle: an upper bound with hindsight, not an online policy")
        t.add_row("mode switches", str(s["switches"]))
        for m, f in s["time_fraction_in_mode"].items():
            t.add_row(f"  time in {m}", f"{100 * f:.1f}%")
    if d.get("agile"):
        c = d["counters"]
        t.add_row("agile: subtrees to nested", f"{c['agile_to_nested']:,}")
        t.add_row("agile: subtrees back to shadow", f"{c['agile_to_shadow']:,}")
        t.add_row("agile: scans", f"{d['agile']['scans']:,}")
    con.print(t)
