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
    p.add_argument("-o", "--output", help="also write the JSON here")


def run(args) -> int:
    from ..bench import run_bench

    modes = tuple(m for m in args.modes.split(",") if m)
    if args.selective and "selective" not in modes:
        modes = modes + ("selective",)

    def progress(name, mode, r):
        print(f"  {name:8s} {mode:9s} {r['records_per_s'] / 1e6:8.2f} M records/s",
              file=sys.stderr)

    out = run_bench(args.records, modes, tuple(args.traces.split(",")), progress=progress)
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
