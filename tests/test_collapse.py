"""Collapsed traces (repeat counts) give exactly the counters of the full trace.

The reference is independent of the engine: a plain-Python collapser that applies the rules of
docs/mvtrace-format.md (fetch and data streams folded on their own, runs closed at sync points
every G instructions of a process image and at every event) to a random full trace with
several processes, fork/exec/exit, munmap and page-crossing accesses.  Both traces are then
simulated in every mode; every counter and every sampling period must be equal.
"""

from __future__ import annotations

import numpy as np
import pytest

from memvirt import simulate
from memvirt.config import Config
from memvirt.errors import TraceError
from memvirt.trace.records import Kind, Trace

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


def collapse(tr: Trace, g: int = G) -> Trace:
    """The reference collapser (docs/mvtrace-format.md), one record at a time."""
    out: list[list[int]] = []
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

    for k, a, s, p, ic, _rep in zip(*(c.tolist() for c in tr.columns().values())):
        if k > M:
            close()
            if k == EXEC:
                count[p] = 0
            out.append([k, a, s, p, ic, 1])
            continue
        if k == IF:
            n = count.get(p, 0)
            if n > 0 and n % g == 0:
                close(p)
            count[p] = n + 1
            runs = fetch_run
        else:
            runs = data_run
        if crosses(a, s):
            runs.pop(p, None)
            out.append([k, a, s, p, ic, 1])
            continue
        i = runs.get(p)
        if i is not None and out[i][0] == k and out[i][1] >> 12 == a >> 12:
            out[i][5] += 1
            out[i][4] += ic
        else:
            runs[p] = len(out)
            out.append([k, a, s, p, ic, 1])
    return Trace.from_records([tuple(r) for r in out], meta=dict(tr.meta))


@pytest.fixture(scope="module")
def traces():
    full = full_trace(7)
    col = collapse(full)
    assert len(col) < 0.6 * len(full)  # it does collapse
    assert col.accesses == full.accesses and col.instructions == full.instructions
    return full, col


CONFIGS = {
    "default": {},
    "small-tlbs": {"hw.dtlb.entries": 8, "hw.dtlb.ways": 2, "hw.itlb.entries": 4,
                   "hw.itlb.ways": 4, "hw.stlb.entries": 32, "hw.stlb.ways": 4},
    "no-l1-tlb": {"hw.dtlb.entries": 0, "hw.itlb.entries": 0},
    "pcid-2level": {"hw.pcid": True, "guest.levels": 2},
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
    diff = {n: (x, y) for n, x, y in zip(a.to_dict()["counters"], a.counters, b.counters)
            if x != y}
    assert not diff
    assert [s["start_instruction"] for s in a.samples] == \
        [s["start_instruction"] for s in b.samples]
    assert [s["counters"] for s in a.samples] == [s["counters"] for s in b.samples]
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
