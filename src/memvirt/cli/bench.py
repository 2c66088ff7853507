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
    p.add_argument("--memory", action="store_true",
                   help="measure the simulator's memory instead: peak state bytes per distinct "
                   "page touched per mode (the constants of memvirt.budget) and per record of "
                   "the in-memory synthetic generators")
    p.add_argument("--memory-pages", type=float, default=float(1 << 21), metavar="N",
                   help="with --memory: pages touched, up to (default 2^21)")
    p.add_argument("-o", "--output", help="also write the JSON here")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override one config key, e.g. --set hw.data_caches=false (the speed "
                   "cost of a mechanism; repeatable)")


def run(args) -> int:
    if args.capture:
        return _capture(args)
    if args.memory:
        return _memory(args)
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


# --------------------------------------------------------------------------------------------
# memory (memvirt bench --memory): the constants of memvirt.budget


def _measure_mode(mode: str, layout: str, max_pages: int, step: int, seed: int = 1):
    """(state bytes of the empty machine, [(pages touched, peak bytes of numpy arrays beyond
    the empty machine)] after each chunk of ``step`` new pages)."""
    import tracemalloc

    import numpy as np

    from .. import state as X
    from ..config import Config
    from ..engine import Machine
    from ..trace.records import Trace

    cfg = Config.from_dict({"guest": {"memory_mib": _guest_mib(max_pages)}})
    if layout == "dense":
        pages = np.arange(max_pages, dtype=np.uint64)
    else:  # 8 pages per page-table page on average, in random order
        rng = np.random.default_rng(seed)
        pages = rng.choice(64 * max_pages, max_pages, replace=False).astype(np.uint64)
    addr = np.uint64(1 << 32) + pages * np.uint64(4096)
    chunks = []
    for lo in range(0, max_pages, step):
        a = addr[lo:lo + step].copy()
        n = len(a)
        chunks.append(Trace(kind=np.ones(n, np.uint8), addr=a, size=np.full(n, 8, np.uint64),
                            pid=np.ones(n, np.int64), icount=np.full(n, 3, np.uint32)))
    start = X.MODES["shadow" if mode == "selective" else mode]
    warm = Machine(Config(), start)  # the kernels loaded (compiled) before measuring
    warm.run_chunk(chunks[0].slice(0, min(4096, len(chunks[0]))), lambda: None)
    if mode == "selective":
        warm.switch(X.MODE_NESTED)
        warm.run_chunk(chunks[0].slice(0, min(4096, len(chunks[0]))), lambda: None)
    del warm
    tracemalloc.start()
    try:
        m = Machine(cfg, start)
        empty = sum(a.nbytes for a in m.state())
        base = tracemalloc.get_traced_memory()[0]  # the empty machine (and nothing else)
        out = []
        for i, ch in enumerate(chunks):
            tracemalloc.reset_peak()
            # selective: the same pages again under nested paging, and back to shadow
            for sw in ((None, X.MODE_NESTED, X.MODE_SHADOW) if mode == "selective" else (None,)):
                if sw is not None:
                    m.switch(sw)
                m.run_chunk(ch, lambda: None)
            out.append((min(max_pages, (i + 1) * step),
                        tracemalloc.get_traced_memory()[1] - base))
        return empty, out
    finally:
        tracemalloc.stop()


def _guest_mib(max_pages: int) -> int:
    return max(3072, (2 * max_pages * 4096) >> 20)


def _rss() -> int:
    from pathlib import Path

    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure_memory(max_pages: int = 1 << 21, step: int = 1 << 14, floor: int = 1 << 17,
                   synth_records: int = 2_000_000, progress=None) -> dict:
    """The constants of ``memvirt.budget``: peak state bytes per page per mode (the largest
    at ``floor`` pages or more), the empty machine's base, the process's resident size after
    a small run in every mode, peak bytes per record of each in-memory generator."""
    import tracemalloc

    import numpy as np

    from .. import api, budget
    from ..config import Config
    from ..trace.records import Trace
    from ..trace.synth import generators, synthesize

    n = 4096  # load the compiled kernels (and the process's base) with a small run
    tiny = Trace(kind=np.ones(n, np.uint8),
                 addr=np.uint64(1 << 32) + np.arange(n, dtype=np.uint64) * np.uint64(4096),
                 size=np.full(n, 8, np.uint64), pid=np.ones(n, np.int64),
                 icount=np.full(n, 3, np.uint32))
    for mode in ("native", "shadow", "nested", "selective"):
        api.simulate(tiny, None, mode)
    step = max(1, min(step, max_pages))
    floor = min(floor, max_pages)
    out: dict = {"max_pages": max_pages, "step": step, "floor": floor,
                 "process_rss": _rss(), "modes": {}}
    for mode in ("native", "shadow", "nested", "selective"):
        d = {}
        for layout in ("dense", "scattered"):
            empty, pts = _measure_mode(mode, layout, max_pages, step)
            worst = max(pts, key=lambda x: x[1] / x[0] if x[0] >= floor else 0)
            d[layout] = {"worst_bytes_per_page": round(worst[1] / worst[0], 1),
                         "worst_at_pages": worst[0],
                         "final_bytes_per_page": round(pts[-1][1] / pts[-1][0], 1)}
            out["empty_state"] = empty
            if progress:
                progress(mode, layout, d[layout])
        d["constant"] = -(-int(max(v["worst_bytes_per_page"] for v in d.values())) // 8) * 8
        out["modes"][mode] = d
    cfg = Config.from_dict({"guest": {"memory_mib": _guest_mib(max_pages)}})
    out["machine_base"] = out["empty_state"] - budget.cache_bytes(cfg) - budget.frame_bytes(cfg)
    synth = {}
    for name, spec in generators().items():
        if "records" not in spec.defaults:
            continue  # streaming: chunk by chunk
        tracemalloc.start()
        try:
            tr = synthesize(name, records=synth_records, memory_budget_fraction=0)
            synth[name] = round(tracemalloc.get_traced_memory()[1] / max(1, len(tr)), 1)
            del tr
        finally:
            tracemalloc.stop()
    out["synth_bytes_per_record"] = synth
    return out


def _memory(args) -> int:
    def progress(mode, layout, d):
        print(f"  {mode:9s} {layout:9s} worst {d['worst_bytes_per_page']:7.1f} B/page "
              f"(at {d['worst_at_pages']:,} pages), final {d['final_bytes_per_page']:7.1f}",
              file=sys.stderr)

    out = measure_memory(int(args.memory_pages), progress=progress)
    text = json.dumps(out, indent=2)
    print(text)
    if args.output:
        from ..fileio import atomic_write_text

        atomic_write_text(args.output, text + "\n", "benchmark results")
    return 0
