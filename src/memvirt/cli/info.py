"""memvirt info: what a trace holds (records, instructions, processes, footprint, kinds)."""

from __future__ import annotations

import json
import sys

from ..trace.records import Kind

NAME = "info"
HELP = "summarise a trace: records, instructions, processes, footprint, records per kind"

PAGE_SHIFT = 12
STAT_KEYS = ("stats_version", "records", "counts", "accesses", "instructions", "processes",
             "pids", "footprint_pages", "footprint_pages_any_process",
             "footprint_pages_per_process")


def summarize(source, chunk_records: int | None = None) -> dict:
    """Summarise a trace source (the dict ``info --json`` prints).  A memvirt Parquet file
    written by this version carries the statistics in its metadata: no pass over the
    records.  Other sources are streamed once (memory grows with the footprint only)."""
    from ..trace.base import DEFAULT_CHUNK
    from ..trace.parquet import STATS_VERSION, TraceStats

    meta = dict(getattr(source, "meta", {}) or {})
    if meta.get("stats_version") == STATS_VERSION and all(k in meta for k in STAT_KEYS):
        d = {k: meta.pop(k) for k in STAT_KEYS}
        d["from_metadata"] = True
    else:
        stats = TraceStats()
        try:
            for chunk in source.chunks(chunk_records or DEFAULT_CHUNK):
                stats.add(chunk)
        except MemoryError:
            from ..errors import MemvirtError

            where = getattr(source, "path", None) or meta.get("name") or "trace"
            raise MemvirtError(
                f"{where}: out of memory counting the distinct pages after {stats.records:,} "
                f"records ({stats.pageset.pages:,} pages so far; counting takes up to 48 bytes "
                f"per distinct page, twice that with several processes)") from None
        d = stats.as_meta()
        d["from_metadata"] = False
        for k in STAT_KEYS:
            meta.pop(k, None)
    d.pop("stats_version", None)
    d["counts"] = {k.name: int(d["counts"].get(k.name, 0)) for k in Kind}
    d["footprint_bytes"] = d["footprint_pages"] << PAGE_SHIFT
    d["meta"] = meta
    return d


def add_arguments(p) -> None:
    p.add_argument("trace", help="trace file (parquet, lackey, champsim)")
    p.add_argument("--format", help="trace format if it cannot be detected")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    from ..trace.base import open_trace

    src = open_trace(args.trace, args.format)
    d = summarize(src)
    d = {"file": str(args.trace), **d}
    if args.json:
        json.dump(d, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title=f"memvirt info: {args.trace}", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("records", f"{d['records']:,}")
    t.add_row("instructions", f"{d['instructions']:,}")
    t.add_row("accesses", f"{sum(d['accesses'].values()):,}")
    t.add_row("processes", f"{d['processes']:,}")
    t.add_row("footprint (4 KiB pages, summed over processes)",
              f"{d['footprint_pages']:,} ({d['footprint_bytes'] / 2**20:,.1f} MiB)")
    for k, v in d["counts"].items():
        if v:
            t.add_row(f"  {k}", f"{v:,}")
    con.print(t)
    if d["processes"] > 1:
        pt = Table(title="footprint per process")
        pt.add_column("pid", justify="right")
        pt.add_column("4 KiB pages", justify="right")
        for pid, n in list(d["footprint_pages_per_process"].items())[:50]:
            pt.add_row(pid, f"{n:,}")
        con.print(pt)
    for k in ("source", "command", "capture_date", "input", "imported_from", "collapse",
              "sync_instructions", "truncated"):
        if k in d["meta"]:
            con.print(f"{k}: {d['meta'][k]}")
    return 0
