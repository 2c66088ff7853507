"""Throughput benchmark: records per second per mode on the two standard synthetic traces.

``hot``: 20 M accesses to a small hot set (mostly TLB hits).  ``uniform``: 20 M accesses
to uniformly random pages over 4 GiB (mostly TLB misses, first touches fault).
Compilation is excluded (a warm-up run on a small trace first); memory is reported as
the peak RSS growth.
"""

from __future__ import annotations

import resource
import time

import numpy as np

from .api import simulate
from .config import Config
from .trace.records import Trace

MODES = ("native", "shadow", "nested")


def hot_trace(n: int, seed: int = 1) -> Trace:
    rng = np.random.default_rng(seed)
    hot = rng.integers(0, 32, n)  # 32 pages: fits a 64-entry DTLB
    addr = (np.uint64(0x4000_0000) + hot.astype(np.uint64) * np.uint64(4096)
            + rng.integers(0, 512, n).astype(np.uint64) * np.uint64(8))
    return Trace(kind=np.full(n, 1, np.uint8), addr=addr, size=np.full(n, 8, np.uint64),
                 pid=np.ones(n, np.int64), icount=np.full(n, 3, np.uint32),
                 meta={"name": "hot"})


def uniform_trace(n: int, seed: int = 2) -> Trace:
    rng = np.random.default_rng(seed)
    pages = rng.integers(0, (4 << 30) >> 12, n).astype(np.uint64)
    addr = np.uint64(0x10_0000_0000) + pages * np.uint64(4096)
    return Trace(kind=np.full(n, 1, np.uint8), addr=addr, size=np.full(n, 8, np.uint64),
                 pid=np.ones(n, np.int64), icount=np.full(n, 3, np.uint32),
                 meta={"name": "uniform"})


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_bench(records: int = 20_000_000, modes=MODES, traces=("hot", "uniform"),
              config: Config | None = None, progress=None) -> dict:
    # uniform touches pages all over 4 GiB: the guest needs the memory to hold them
    cfg = (config or Config()).with_overrides({"guest.memory_mib": 8192})
    warm = hot_trace(10_000)
    for m in modes:  # compile (or load the cache) outside the timed region
        simulate(warm, cfg, m)
    out: dict = {"records": records, "results": {}}
    makers = {"hot": hot_trace, "uniform": uniform_trace}
    for name in traces:
        tr = makers[name](records)
        out["results"][name] = {}
        for m in modes:
            rss0 = _rss_mib()
            t0 = time.perf_counter()
            simulate(tr, cfg, m)
            dt = time.perf_counter() - t0
            out["results"][name][m] = {
                "seconds": round(dt, 3),
                "records_per_s": round(records / dt),
                "peak_rss_growth_mib": round(_rss_mib() - rss0, 1),
            }
            if progress:
                progress(name, m, out["results"][name][m])
    for per in out["results"].values():
        nat = per.get("native", {}).get("records_per_s")
        if nat:
            for r in per.values():
                r["relative_to_native"] = round(r["records_per_s"] / nat, 3)
    return out
