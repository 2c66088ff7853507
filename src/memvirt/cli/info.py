"""memvirt info: what a trace holds (records, instructions, processes, footprint, kinds)."""

from __future__ import annotations

import json
import sys

import numpy as np

from ..trace.records import Kind, Trace

NAME = "info"
HELP = "summarise a trace: records, instructions, processes, footprint, records per kind"

PAGE_SHIFT = 12
_MERGE_AT = 1 << 22


class Footprint:
    """Distinct 4 KiB pages touched per process, accumulated chunk by chunk (memory grows
    with the footprint, not with the trace)."""

    def __init__(self) -> None:
        self._done: dict[int, np.ndarray] = {}
        self._pending: dict[int, list[np.ndarray]] = {}
        self._pending_n: dict[int, int] = {}

    @staticmethod
    def pages(addr: np.ndarray, size: np.ndarray) -> np.ndarray:
        """Page numbers touched by accesses (an access that crosses a boundary touches
        every page it spans)."""
        first = addr >> np.uint64(PAGE_SHIFT)
        last = (addr + np.maximum(size, np.uint64(1)) - np.uint64(1)) >> np.uint64(PAGE_SHIFT)
        span = last - first
        span[last < first] = 0  # wrapped at the top of the address space
        if not span.any():
            return first
        parts = [first]
        multi = np.flatnonzero(span)
        small = multi[span[multi] < 64]
        parts.append(last[small])
        for i in multi[span[multi] >= 64]:  # huge accesses: rare, cap the expansion
            n = int(min(span[i], 1 << 16))
            parts.append(first[i] + np.arange(1, n + 1, dtype=np.uint64))
        for k in range(1, 63):  # the middle pages of accesses spanning 3..63 pages
            mid = small[span[small] > k]
            if not len(mid):
                break
            parts.append(first[mid] + np.uint64(k))
        return np.concatenate(parts)

    def add(self, trace: Trace) -> None:
        acc = trace.kind <= int(Kind.MODIFY)
        if not acc.any():
            return
        pid = trace.pid[acc]
        addr, size = trace.addr[acc], trace.size[acc]
        if pid[0] == pid[-1] and np.all(pid == pid[0]):
            groups = [(int(pid[0]), slice(None))]
        else:
            groups = [(int(p), pid == p) for p in np.unique(pid)]
        for p, sel in groups:
            pages = np.unique(self.pages(addr[sel], size[sel]))
            self._pending.setdefault(p, []).append(pages)
            self._pending_n[p] = self._pending_n.get(p, 0) + len(pages)
            if self._pending_n[p] >= _MERGE_AT:
                self._merge(p)

    def _merge(self, p: int) -> None:
        parts = self._pending.pop(p, [])
        self._pending_n[p] = 0
        if p in self._done:
            parts.append(self._done[p])
        if parts:
            self._done[p] = np.unique(np.concatenate(parts))

    def per_process(self) -> dict[int, np.ndarray]:
        for p in list(self._pending):
            self._merge(p)
        return dict(self._done)


def summarize(source, chunk_records: int | None = None) -> dict:
    """Stream a trace source and summarise it (the dict ``info --json`` prints)."""
    from ..trace.base import DEFAULT_CHUNK
    from ..trace.parquet import TraceStats

    stats = TraceStats()
    fp = Footprint()
    for chunk in source.chunks(chunk_records or DEFAULT_CHUNK):
        stats.add(chunk)
        fp.add(chunk)
    per = fp.per_process()
    per_counts = {str(p): int(len(v)) for p, v in sorted(per.items())}
    total = sum(per_counts.values())
    union = len(np.unique(np.concatenate(list(per.values())))) if per else 0
    meta = dict(getattr(source, "meta", {}) or {})
    for k in ("records", "counts", "instructions", "processes"):
        meta.pop(k, None)
    return {
        "records": stats.records,
        "instructions": stats.instructions,
        "processes": len(stats.pids),
        "pids": stats.pids,
        "counts": {k.name: int(stats.kinds[int(k)]) for k in Kind},
        "footprint_pages": total,
        "footprint_bytes": total << PAGE_SHIFT,
        "footprint_pages_any_process": union,
        "footprint_pages_per_process": per_counts,
        "meta": meta,
    }


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
    for k in ("source", "command", "capture_date", "input", "imported_from"):
        if k in d["meta"]:
            con.print(f"{k}: {d['meta'][k]}")
    return 0
