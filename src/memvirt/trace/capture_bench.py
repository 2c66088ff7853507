"""Capture speed: mvtrace (collapsed and full) against Valgrind's Lackey on the same program.

``run_capture_bench()`` captures one program with each backend through ``memvirt capture``'s
own code path (tool, decoder, scheduler, Parquet writer) and reports, per backend: wall time,
CPU time (memvirt and Valgrind together), raw events (instruction fetches, loads, stores,
modifies) per second of that CPU time, records written, bytes the tool wrote per instruction,
the Parquet file's bytes per instruction, and peak memory of memvirt and of Valgrind.

The program is the Python interpreter running a small loop (no compiler needed; about
10^8 instructions at ``scale=1``): ``python3 -S -c "..."`` with ``PYTHONHASHSEED=0``.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

LOOP = ("s = 0\nd = {}\nfor i in range(%d):\n    s += i * i\n    d[i & 1023] = s\n"
        "print(s & 0xffff, len(d))\n")
BASE_ITERATIONS = 40_000  # about 10^8 instructions with Python 3.11 (7.7e8 at 300,000)


def bench_program(scale: float = 1.0) -> list[str]:
    python = os.path.realpath(sys.executable)
    return [python, "-S", "-c", LOOP % max(1, int(BASE_ITERATIONS * scale))]


def _rusage():
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me, ch


def measure(cmd: list[str], backend: str, collapse: str, workdir: Path) -> dict:
    from .capture import capture

    out = workdir / f"{backend}-{collapse}.parquet"
    me0, ch0 = _rusage()
    t0 = time.perf_counter()
    res = capture(cmd, out, backend=backend, collapse=collapse, workdir=workdir)
    wall = time.perf_counter() - t0
    me1, ch1 = _rusage()
    cpu_self = (me1.ru_utime - me0.ru_utime) + (me1.ru_stime - me0.ru_stime)
    cpu_valgrind = (ch1.ru_utime - ch0.ru_utime) + (ch1.ru_stime - ch0.ru_stime)
    meta = res.meta
    acc = sum(meta.get("accesses", {}).values()) if "accesses" in meta else None
    if acc is None:
        from ..cli.info import summarize
        from .base import open_trace

        acc = sum(summarize(open_trace(out))["accesses"].values())
    instr = res.instructions
    row = {
        "backend": backend,
        "collapse": collapse,
        "instructions": instr,
        "raw_events": acc,
        "records": res.records,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu_self + cpu_valgrind, 3),
        "cpu_valgrind_s": round(cpu_valgrind, 3),
        "raw_events_per_cpu_s": round(acc / max(cpu_self + cpu_valgrind, 1e-9)),
        "tool_bytes_per_instruction": round(meta.get("stream_bytes", 0) / max(instr, 1), 3),
        "parquet_bytes_per_instruction": round(out.stat().st_size / max(instr, 1), 4),
        "peak_rss_memvirt_mib": round(me1.ru_maxrss / 1024, 1),
        "peak_rss_valgrind_mib": round(ch1.ru_maxrss / 1024, 1),
    }
    out.unlink()
    return row


def run_capture_bench(scale: float = 1.0, lackey: bool = True, progress=None) -> dict:
    """Capture the benchmark program with each backend; Lackey last (it is the slow one)."""
    cmd = bench_program(scale)
    os.environ["PYTHONHASHSEED"] = "0"
    rows = []
    runs = [("mvtrace", "page"), ("mvtrace", "none")] + ([("lackey", "none")] if lackey else [])
    with tempfile.TemporaryDirectory(prefix="memvirt-capture-bench-") as d:
        for backend, collapse in runs:
            row = measure(cmd, backend, collapse, Path(d))
            rows.append(row)
            if progress is not None:
                progress(row)
    out = {"program": " ".join(cmd[:3]) + " <loop>", "scale": scale, "runs": rows}
    if lackey:
        ref = rows[-1]
        for r in rows[:-1]:
            r["speedup_wall_vs_lackey"] = round(ref["wall_s"] / r["wall_s"], 1)
            r["speedup_cpu_vs_lackey"] = round(ref["cpu_s"] / r["cpu_s"], 1)
    return out


def markdown_table(out: dict) -> str:
    """The benchmark as a Markdown table (what the README quotes, pasted as printed)."""
    lines = [f"Program: `{out['program']}` (scale {out['scale']:g}), "
             f"{out['runs'][0]['instructions']:,} instructions.", "",
             "| backend | records | wall s | CPU s | raw events / CPU s | tool B/instr "
             "| Parquet B/instr | vs Lackey (wall) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out["runs"]:
        name = r["backend"] + ("" if r["backend"] == "lackey" else f" --collapse {r['collapse']}")
        speed = r.get("speedup_wall_vs_lackey")
        lines.append(
            f"| {name} | {r['records']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} "
            f"| {r['raw_events_per_cpu_s'] / 1e6:.1f} M | {r['tool_bytes_per_instruction']:.2f} "
            f"| {r['parquet_bytes_per_instruction']:.3f} "
            f"| {f'{speed:.1f}x' if speed else ('1x' if r['backend'] == 'lackey' else '-')} |")
    return "\n".join(lines) + "\n"
