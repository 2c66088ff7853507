"""Collapsed traces (repeat counts) give exactly the counters of the full trace.

The reference is independent of the engine: a plain-Python collapser that applies the rules of
docs/mvtrace-format.md (fetch and data streams folded on their own, runs closed at sync points
every G instructions of a process image and at every event) to a random full trace with
several processes, fork/exec/exit, munmap and page-crossing accesses.  Both traces are then
simulated in every mode; every counter and every sampling period must be equal.

The collapser also computes each data record's ``lines`` bitmap (the 64-byte lines of its page
its accesses touched, 0 when only the first access's lines); test_mvtrace_tool.py checks the
Valgrind tool's bitmaps against it.
"""

from __future__ import annotations

import numpy as np
import pytest

from memvirt import simulate
from memvirt.config import Config
from memvirt.errors import TraceError
from memvirt.trace.records import Kind, Trace

from .helpers import counter_diff

IF, L, S, M = (int(k) for k in (Kind.IFETCH, Kind.LOAD, Kind.STORE, Kind.MODIFY))
MUNMAP, FORK, EXEC, EXIT, SWITCH, MMAP = (int(k) for k in (
    Kind.MUNMAP, Kind.FORK, Kind.EXEC, Kind.EXIT, Kind.SWITCH, Kind.MMAP))
G = 64  # sync interval of the test traces
CODE = 0x40_0000
HEAP = 0x1000_0000


def full_trace(seed: int, instructions: int = 30_000) -> Trace:
    """A random full (one record per access) trace of a few processes on one vCPU.

    Processes switch only at sync points or after events, as memvirt's capture scheduler
    does; each instruction is a fetch followed by 0-2 data accesses."""
    rng = np.random.default_rng(seed)
    recs: list[tuple] = []
    procs = {100: 0}  # pid -> instructions of its image
    order = [100]
    next_pid = 101
    cur = 100
    done = 0
    while done < instructions and order:
        p = cur
        # run whole sync blocks of G instructions (or until an event)
        code_page = CODE
        data_page = HEAP
        for _ in range(int(rng.integers(1, 6)) * G):
            if rng.random() < 0.05:
                code_page = CODE + int(rng.integers(0, 6)) * 4096
            off = int(rng.integers(0, 4096 - 16)) if rng.random() > 0.01 else 4094
            recs.append((IF, code_page + off, 4 if off != 4094 else 6, p, 1))
            procs[p] += 1
            done += 1
            for _ in range(int(rng.choice(3, p=[0.3, 0.5, 0.2]))):
                k = int(rng.choice([L, S, M], p=[0.8, 0.15, 0.05]))
                r = rng.random()
                if r < 0.1:
                    data_page = HEAP + int(rng.integers(0, 8)) * 4096  # hot pages
                elif r < 0.15:
                    data_page = HEAP + int(rng.integers(0, 400)) * 4096
                page = data_page
                off = int(rng.integers(0, 4096 // 8)) * 8
                size = 8 if rng.random() > 0.02 else 16
                if size == 16:
                    off = 4088  # crosses into the next page
                recs.append((k, page + off, size, p, 0))
            if rng.random() < 0.004:
                break  # an event ends the block early
        r = rng.random()
        if r < 0.15:
            recs.append((MUNMAP, HEAP + int(rng.integers(0, 400)) * 4096, 3 * 4096, p, 0))
        elif r < 0.2:
            recs.append((MMAP, HEAP, 4096, p, 0))
        elif r < 0.3 and len(order) < 4:
            child = next_pid
            next_pid += 1
            recs.append((FORK, child, 0, p, 0))
            procs[child] = 0
            order.append(child)
        elif r < 0.34:
            recs.append((EXEC, 0, 0, p, 0))
            procs[p] = 0
        elif r < 0.38 and len(order) > 1:
            recs.append((EXIT, 0, 0, p, 0))
            order.remove(p)
            del procs[p]
        nxt = order[int(rng.integers(0, len(order)))]
        if nxt != p or p not in procs:
            recs.append((SWITCH, 0, 0, nxt, 0))
        cur = nxt
    return Trace.from_records(recs, meta={"sync_instructions": G})


def lines_touched(a: int, s: int) -> set[int]:
    """The 64-byte lines (0-63) of the page of byte ``a`` that an access of ``s`` bytes at
    ``a`` touches (only those of its first page when it crosses into the next)."""
    end = min(a + max(s, 1) - 1, (a | 0xFFF))  # its last byte on the first page
    return set(range((a & 0xFFF) // 64, (end & 0xFFF) // 64 + 1))


def bitmap(lines: set[int]) -> int:
    return sum(1 << i for i in lines)


def collapse(tr: Trace, g: int = G) -> Trace:
    """The reference collapser (docs/mvtrace-format.md), one record at a time, from a full
    trace (one record per access).  A data record's lines: the set of lines its accesses
    touched, as a bitmap, or 0 when that is only the first access's lines."""
    out: list[list] = []  # kind, addr, size, pid, icount, repeat, set of lines
    count: dict[int, int] = {}
    fetch_run: dict[int, int] = {}  # pid -> index in out of the open fetch record
    data_run: dict[int, int] = {}

    def close(pid=None):
        for runs in (fetch_run, data_run):
            if pid is None:
                runs.clear()
            else:
                runs.pop(pid, None)

    def crosses(a, s):
        return (a >> 12) != ((a + max(s, 1) - 1) >> 12)

    cols = tr.columns()
    assert (cols["repeat"] == 1).all() and (cols["lines"] == 0).all()  # a full trace
    for k, a, s, p, ic in zip(*(cols[c].tolist() for c in ("kind", "addr", "size", "pid",
                                                             "icount"))):
        if k > M:
            close()
            if k == EXEC:
                count[p] = 0
            out.append([k, a, s, p, ic, 1, set()])
            continue
        if k == IF:
            n = count.get(p, 0)
            if n > 0 and n % g == 0:
                close(p)
            count[p] = n + 1
            runs = fetch_run
        else:
            runs = data_run
        lines = lines_touched(a, s) if k != IF else set()
        if crosses(a, s):
            runs.pop(p, None)
            out.append([k, a, s, p, ic, 1, lines])
            continue
        i = runs.get(p)
        if i is not None and out[i][0] == k and out[i][1] >> 12 == a >> 12:
            out[i][5] += 1
            out[i][4] += ic
            out[i][6] |= lines
        else:
            runs[p] = len(out)
            out.append([k, a, s, p, ic, 1, lines])
    rows = [(*r[:6], 0 if r[6] <= lines_touched(r[1], r[2]) else bitmap(r[6])) for r in out]
    return Trace.from_records(rows, meta=dict(tr.meta))


@pytest.fixture(scope="module")
def traces():
    full = full_trace(7)
    col = collapse(full)
    assert len(col) < 0.6 * len(full)  # it does collapse
    assert col.accesses == full.accesses and col.instructions == full.instructions
    return full, col


# The VMM's TLB footprint at exits is off with TLBs smaller than it (docs/mvtrace-format.md,
# "What is exact"): folded accesses assume their page stays the most recent in its set,
# which an exit that refills a tiny TLB can break.
NO_VMM_TLB = {"vmm.exit_code_pages": 0, "vmm.exit_data_pages": 0}
CONFIGS = {
    "default": {},
    "small-tlbs": {"hw.dtlb.entries": 8, "hw.dtlb.ways": 2, "hw.itlb.entries": 4,
                   "hw.itlb.ways": 4, "hw.stlb.entries": 32, "hw.stlb.ways": 4, **NO_VMM_TLB},
    "no-l1-tlb": {"hw.dtlb.entries": 0, "hw.itlb.entries": 0, **NO_VMM_TLB},
    "pcid-2level": {"hw.pcid": True, "guest.levels": 2},
    # without data pricing nothing depends on the order of lines inside a run: exact
    "no-data-caches": {"hw.data_caches": False},
}


@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
@pytest.mark.parametrize("mode", ["native", "shadow", "nested", "selective"])
def test_collapsed_equals_full(traces, mode, cfg_name):
    full, col = traces
    # selective: a fixed schedule that switches often (each switch flushes the TLBs and
    # rebuilds shadows, so a misplaced period boundary would show)
    schedule = ["nested", "shadow", "shadow", "nested", "shadow"] * 20
    over = {"selective.period_instructions": 1000, "selective.policy": "oracle",
            "selective.policy_params": {"schedule": schedule}, **CONFIGS[cfg_name]}
    cfg = Config().with_overrides(over)
    a = simulate(full, cfg, mode)
    b = simulate(col, cfg, mode)
    rel = 0.0 if cfg_name == "no-data-caches" else 0.005
    assert not counter_diff(a.counters, b.counters, rel=rel, slack=0 if rel == 0 else 16)
    assert [s["start_instruction"] for s in a.samples] == \
        [s["start_instruction"] for s in b.samples]
    for sa, sb in zip(a.samples, b.samples):
        assert not counter_diff(sa["counters"], sb["counters"], rel=rel,
                                slack=0 if rel == 0 else 16)
    if mode == "selective":
        assert a.selective["switches"] > 10
        assert a.selective["decisions"] == b.selective["decisions"]


def test_periods_end_only_at_sync_points(traces):
    full, _ = traces
    cfg = Config().with_overrides({"selective.period_instructions": 1000})
    res = simulate(full, cfg, "nested")
    # Every period but the last starts at a sync point of the process running then: its
    # start is >= the nominal boundary and it is reached by whole G blocks of a process.
    starts = [s["start_instruction"] for s in res.samples]
    assert starts[0] == 0
    assert all(b >= (i + 1) * 1000 for i, b in enumerate(starts[1:]))
    assert all(b - a >= 1000 - G for a, b in zip(starts, starts[1:]))


def _one(rec):
    return Trace.from_records([(IF, CODE, 4, 1, 1), rec])


@pytest.mark.parametrize("rec, msg", [
    ((L, HEAP, 8, 1, 0, 0), "repeat count 0"),
    ((L, HEAP + 4092, 8, 1, 0, 3), "crosses a page"),
    ((MMAP, HEAP, 4096, 1, 0, 2), "repeat count 2 on a MMAP event"),
])
def test_bad_repeat_counts_are_clear_errors(rec, msg):
    with pytest.raises(TraceError, match=msg):
        simulate(_one(rec), Config(), "native")


# --------------------------------------------------------------------------------------------
# the lines bitmaps of the reference collapser


def test_reference_collapser_lines():
    """Hand-built runs: a page swept by 8-byte loads touches all 64 lines, 512 loads of one
    word only the first access's line (0: not recorded), an access across two lines sets
    both, a page-crossing access folds nothing, fetches and events carry none."""
    P = HEAP + 5 * 4096
    recs = [(IF, CODE, 4, 1, 1)]
    recs += [(L, P + 8 * i, 8, 1, 0) for i in range(512)]         # a sweep: every line
    recs += [(IF, CODE + 4, 4, 1, 1)]
    recs += [(S, P + 4096 + 64, 8, 1, 0)] * 512                    # one word, 512 times
    recs += [(M, P + 100, 4, 1, 0), (M, P + 60, 8, 1, 0), (M, P + 130, 2, 1, 0)]
    recs += [(MMAP, HEAP, 4096, 1, 0)]                              # closes the runs
    recs += [(M, P + 4090, 8, 1, 0), (M, P + 4096 + 8, 8, 1, 0), (M, P + 4096 + 16, 8, 1, 0)]
    recs += [(L, P + 200, 8, 1, 0), (L, P + 4032, 128, 1, 0), (L, P + 8, 8, 1, 0)]
    for i in range(3):
        recs += [(IF, CODE + 8 * i, 4, 1, 1), (L, P + 64 * 63, 8, 1, 0)]  # fetches between
    col = collapse(Trace.from_records(recs, meta={}), g=1 << 20)
    got = [(int(k), int(a), int(r), int(ln))
           for k, a, r, ln in zip(col.kind, col.addr, col.repeat, col.lines)]
    assert got == [
        (IF, CODE, 2, 0),
        (L, P, 512, 2**64 - 1),
        (S, P + 4096 + 64, 512, 0),
        (M, P + 100, 3, 0b111),           # lines 1, then 0 and 1 (bytes 60-67), then 2
        (MMAP, HEAP, 1, 0),
        (M, P + 4090, 1, 0),              # crosses a page: a record of its own
        (M, P + 4096 + 8, 2, 0),          # the same line twice
        (L, P + 200, 1, 0),
        (L, P + 4032, 1, 0),              # crosses: closes the run
        (L, P + 8, 4, 1 | 1 << 63),       # then line 63 three times, fetches in between
        (IF, CODE, 3, 0),
    ]
    assert col.accesses == Trace.from_records(recs).accesses


def test_reference_lines_invariants(traces):
    """In the random trace: only data records of two or more accesses have bitmaps, and each
    holds the first access's lines and at least one more line of the page."""
    full, col = traces
    has = col.lines != 0
    assert has.sum() > 100
    assert (col.kind[has] >= L).all() and (col.kind[has] <= M).all()
    assert (col.repeat[has] >= 2).all()
    for a, s, ln in zip(col.addr[has].tolist(), col.size[has].tolist(),
                        col.lines[has].tolist()):
        first = bitmap(lines_touched(a, s))
        assert ln & first == first and ln & ~first


def test_line_bits_helper_matches_the_reference():
    """``records.line_bits`` (for consumers of the column) against this file's sets."""
    from memvirt.trace.records import line_bits

    rng = np.random.default_rng(3)
    cases = [(0, 1), (63, 2), (4095, 1), (4088, 16), (0, 4096), (64, 4096), (4032, 64)]
    cases += [(int(a), int(s)) for a, s in zip(rng.integers(0, 1 << 40, 2000),
                                               rng.choice([1, 2, 4, 8, 16, 32, 64, 100, 512,
                                                           5000], 2000))]
    for a, s in cases:
        assert line_bits(a, s) == bitmap(lines_touched(a, s)), (a, s)


# ------------------------------------------------------------------------------------------
# the capture scheduler on collapsed streams

class _PieceStream:
    """One process's records, handed to the scheduler in pieces cut at random points (as a
    live capture reads whatever the tool has written so far)."""

    def __init__(self, tr: Trace, rng):
        n = len(tr)
        cuts = sorted(set(rng.integers(1, max(n, 2), size=max(1, n // 40)).tolist()))
        bounds = [0, *[c for c in cuts if c < n], n]
        self.parts = [tr.slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
        self.name = "test stream"

    def read(self):
        from memvirt.trace.capture import STREAM_END

        return self.parts.pop(0) if self.parts else STREAM_END


class _PassParser:
    name = "test stream"
    lines = 0

    def parse(self, piece):
        return piece

    def end_of_file(self):
        return Trace.empty()


def _process_stream(rng, pid: int, instructions: int, child: int | None) -> Trace:
    """A full stream of one process: fetches on a few code pages in long runs (so that
    collapsed fetch records run past a slice's end), loads, and a FORK first if ``child``."""
    recs = [] if child is None else [(FORK, child, 0, pid, 0)]
    page = CODE
    for _ in range(instructions):
        if rng.random() < 0.003:
            page = CODE + int(rng.integers(0, 4)) * 4096
        recs.append((IF, page + int(rng.integers(0, 4000)), 4, pid, 1))
        if rng.random() < 0.3:
            recs.append((L, HEAP + int(rng.integers(0, 3)) * 4096 + 64, 8, pid, 0))
    return Trace.from_records(recs)


def _merge(streams: dict[int, Trace], first: int, seed: int, slice_instr: int) -> Trace:
    from memvirt.trace.capture import Scheduler

    rng = np.random.default_rng(seed)

    class Logs:
        def stream(self, pid):
            return _PieceStream(streams[pid], rng)

        def pids(self):
            return list(streams)

    sched = Scheduler(Logs(), first, slice_instr, parser=lambda pid: _PassParser(), sync=G)
    return Trace.concat(list(sched.run()))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scheduler_commutes_with_the_collapse(seed):
    """Merging the processes' collapsed streams gives the collapse of merging their full
    streams: time slices end at the same instruction of each process whether a sync point's
    fetch record holds one instruction or a run of them that goes past the slice's end (a
    slice that is not a multiple of G ends inside such runs), however the streams arrive."""
    rng = np.random.default_rng(seed)
    streams = {10: _process_stream(rng, 10, 9000, child=11),
               11: _process_stream(rng, 11, 7000, child=None)}
    for slice_instr in (1000, 1500 + seed):
        full = _merge(streams, 10, seed, slice_instr)
        col = _merge({p: collapse(t) for p, t in streams.items()}, 10, seed + 7, slice_instr)
        assert int((full.kind == SWITCH).sum()) >= 8  # it does switch
        assert collapse(full).equals(col)
