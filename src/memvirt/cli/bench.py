"""memvirt bench: records per second per mode (and trace-format speeds)."""

from __future__ import annotations

import json
import sys

NAME = "bench"
HELP = "measure simulator throughput (records/s per mode) and print JSON"


def add_arguments(p) -> None:
    p.add_argument("--records", type=int, default=20_000_000, help="records per trace (20 M)")
    p.add_argument("--modes", default="native,shadow,nested")
    p.add_argument("--traces", default="hot,uniform")
    p.add_argument("--formats", action="store_true",
                   help="also measure trace readers and synthetic generation")
    p.add_argument("--selective", action="store_true", help="also measure selective mode")
    p.add_argument("--capture", action="store_true",
                   help="measure capture instead: mvtrace (collapsed, full) against Lackey on "
                   "a ~10^8-instruction Python loop")
    p.add_argument("--markdown", action="store_true",
                   help="with --capture: print a Markdown table instead of JSON")
    p.add_argument("--capture-scale", type=float, default=1.0, metavar="X",
                   help="capture program length x 10^8 instructions (default 1)")
    p.add_argument("--no-lackey", action="store_true",
                   help="with --capture: skip the (slow) Lackey reference run")
    p.add_argument("-o", "--output", help="also write the JSON here")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override one config key, e.g. --set hw.data_caches=false (the speed "
                   "cost of a mechanism; repeatable)")


def run(args) -> int:
    if args.capture:
        return _capture(args)
    from ..bench import run_bench

    modes = tuple(m for m in args.modes.split(",") if m)
    if args.selective and "selective" not in modes:
        modes = modes + ("selective",)

    def progress(name, mode, r):
        print(f"  {name:8s} {mode:9s} {r['records_per_s'] / 1e6:8.2f} M records/s",
              file=sys.stderr)

    from ..config import Config

    cfg = Config.load(overrides=args.overrides)
    out = run_bench(args.records, modes, tuple(args.traces.split(",")), config=cfg,
                    progress=progress)
    out["overrides"] = list(args.overrides)
    if args.formats:
        try:
            from ..trace.bench import run_format_bench

            out["formats"] = run_format_bench()
        except ImportError as e:  # pragma: no cover
            out["formats"] = {"error": str(e)}
        try:
            from ..trace.synth.bench import run_synth_bench

            out["synth"] = run_synth_bench()
        except ImportError as e:  # pragma: no cover
            out["synth"] = {"error": str(e)}
    text = json.dumps(out, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return 0


def _capture(args) -> int:
    from ..trace.capture_bench import run_capture_bench

    def progress(r):
        print(f"  {r['backend']:8s} {r['collapse']:5s} {r['wall_s']:8.2f} s wall "
              f"{r['raw_events_per_cpu_s'] / 1e6:8.1f} M raw events/s of CPU "
              f"{r['tool_bytes_per_instruction']:6.2f} B/instruction", file=sys.stderr)

    out = run_capture_bench(args.capture_scale, lackey=not args.no_lackey, progress=progress)
    text = json.dumps(out, indent=2)
    if args.markdown:
        from ..trace.capture_bench import markdown_table

        print(markdown_table(out), end="")
    else:
        print(text)
    if args.output:
        from ..fileio import atomic_write_text

        atomic_write_text(args.output, text + "\n", "benchmark results")
    return 0
