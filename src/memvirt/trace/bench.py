"""Speeds of the trace formats: Lackey lines/s, ChampSim records/s, Parquet write/read records/s.

``run_format_bench()`` generates its inputs (a few million records each), warms up the
compiled scanner, and times each reader; every measurement is repeated while its share of
``seconds_budget`` lasts and the best run is reported.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .records import Trace


def _lackey_text(lines: int, seed: int = 1) -> bytes:
    """Lackey-like text: a block of distinct random lines repeated up to ``lines`` lines."""
    rng = np.random.default_rng(seed)
    n = min(lines, 100_000)
    kind = rng.choice(4, n, p=[0.6, 0.25, 0.1, 0.05])
    addr = rng.integers(0x400000, 1 << 40, n)
    size = rng.choice([1, 2, 4, 8], n)
    prefix = ("I  ", " L ", " S ", " M ")
    block = "".join(f"{prefix[k]}{a:08x},{s}\n" for k, a, s in zip(kind, addr, size)).encode()
    reps = -(-lines // n)
    return block * reps if reps > 1 else block


def _champsim_bytes(records: int, seed: int = 2) -> bytes:
    from .champsim import RECORD_DTYPE

    rng = np.random.default_rng(seed)
    r = np.zeros(records, RECORD_DTYPE)
    r["ip"] = rng.integers(0x400000, 0x800000, records)
    r["src_mem"] = np.where(rng.random((records, 4)) < 0.25,
                            rng.integers(1, 1 << 40, (records, 4)), 0)
    r["dst_mem"] = np.where(rng.random((records, 2)) < 0.15,
                            rng.integers(1, 1 << 40, (records, 2)), 0)
    return r.tobytes()


def _synthetic_trace(records: int, seed: int = 3) -> Trace:
    rng = np.random.default_rng(seed)
    kind = rng.choice(4, records, p=[0.6, 0.25, 0.1, 0.05]).astype(np.uint8)
    return Trace(kind=kind,
                 addr=(rng.integers(0x400000, 1 << 32, records) & ~7).astype(np.uint64),
                 size=np.full(records, 8, np.uint64), pid=np.ones(records, np.int64),
                 icount=(kind == 0).astype(np.uint32))


def _best(fn, budget: float) -> float:
    """Run ``fn`` at least once and again while ``budget`` seconds last; best time."""
    best = float("inf")
    t_end = time.perf_counter() + budget
    while True:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() + best > t_end:
            return best


def run_format_bench(seconds_budget: float = 10.0, records: int = 3_000_000) -> dict:
    """Measure the readers and the Parquet writer; returns a dict of rates (per second)."""
    from .champsim import RECORD_DTYPE, expand_records
    from .lackey import LackeyParser, read_lackey
    from .parquet import TraceWriter, read_parquet

    share = max(seconds_budget, 0.0) / 4
    out: dict = {"records": records}
    with tempfile.TemporaryDirectory(prefix="memvirt-bench-") as d:
        tmp = Path(d)
        # Lackey: parse a text file (page-cached) block by block
        text = _lackey_text(records)
        lk = tmp / "bench.lackey"
        lk.write_bytes(text)
        nlines = text.count(b"\n")
        LackeyParser("warm-up").parse(text[:text.index(b"\n", 4096) + 1])  # compile / load the scanner
        del text

        def lackey():
            n = 0
            for c in read_lackey(lk).chunks():
                n += len(c)
            assert n == nlines

        t = _best(lackey, share)
        out["lackey_lines"] = nlines
        out["lackey_lines_per_s"] = nlines / t
        out["lackey_mb_per_s"] = lk.stat().st_size / t / 1e6
        os.unlink(lk)

        # ChampSim: expansion of an in-memory raw buffer (after decompression)
        raw = _champsim_bytes(records)
        n_rec = len(raw) // 64
        block = 1 << 16

        def champsim():
            for s in range(0, n_rec, block):
                expand_records(np.frombuffer(raw, RECORD_DTYPE, count=min(block, n_rec - s),
                                             offset=s * 64))

        t = _best(champsim, share)
        out["champsim_records"] = n_rec
        out["champsim_records_per_s"] = n_rec / t
        raw = b""  # release the buffer

        # Parquet: write then read
        tr = _synthetic_trace(records)
        pq_path = tmp / "bench.parquet"

        def write():
            with TraceWriter(pq_path, {"source": "bench"}) as w:
                for c in tr.chunks(1 << 20):
                    w.write(c)

        t = _best(write, share)
        out["parquet_write_records_per_s"] = records / t
        out["parquet_bytes_per_record"] = pq_path.stat().st_size / records

        def read():
            n = 0
            for c in read_parquet(pq_path).chunks():
                n += len(c)
            assert n == records

        t = _best(read, share)
        out["parquet_read_records_per_s"] = records / t
    return out


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run_format_bench(), indent=2))
