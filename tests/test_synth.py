"""Synthetic generators: determinism, size, the contract's event-order rules, and each
generator's regime, all checked with plain numpy on the generated columns."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from memvirt.errors import MemvirtError
from memvirt.trace.records import Kind, Trace
from memvirt.trace.synth import generators, register_generator, synthesize
from memvirt.trace.synth.suite import build_workload, default_suite

PAGE = 4096
HEAP_BASE = 0x0100_0000
MMAP_BASE = 0x1000_0000
ACCESS = int(Kind.MODIFY)  # kinds <= MODIFY are accesses

# Small parameter sets: every generator in well under a second.
SMALL = {
    "chase": dict(records=120_000, footprint_mib=8, span_mib=256, per_node=2),
    "compile": dict(records=150_000, processes=6, heap_mib=1.0),
    "stream": dict(records=100_000, footprint_mib=3, arrays=3),
    "churn": dict(records=100_000, block_mib=1.0, touches=8),
    "phases": dict(records=200_000, phases=4, footprint_mib=4, block_mib=1.0, touches=16),
    "compute": dict(records=100_000, footprint_mib=1.0),
    "hot": dict(records=50_000),
    "uniform": dict(records=50_000),
}

_CACHE: dict = {}


def gen(name: str, **extra) -> Trace:
    key = (name, tuple(sorted(extra.items())))
    if key not in _CACHE:
        _CACHE[key] = synthesize(name, **{**SMALL[name], **extra})
    return _CACHE[key]


def pages_of(t: Trace, mask=None) -> np.ndarray:
    acc = t.kind <= ACCESS if mask is None else mask
    return np.unique(t.addr[acc] >> np.uint64(12))


def check_event_order(t: Trace, va_bits: int = 31) -> None:
    """The rules of records.py, checked independently of the generators."""
    kind, pid, addr, size = t.kind, t.pid, t.addr, t.size
    n = len(t)
    assert set(np.unique(kind).tolist()) <= {int(k) for k in Kind}
    acc = kind <= ACCESS
    ev = ~acc
    # accesses: nonzero size, inside the guest's address space, instructions carried
    assert (size[acc] > 0).all()
    assert (addr[acc] + size[acc] <= np.uint64(1 << va_bits)).all()
    assert (t.icount[acc] >= 1).all()
    assert (t.icount[ev] == 0).all()
    # events: ranges page-aligned and inside the address space
    rng_ev = np.isin(kind, [int(Kind.MMAP), int(Kind.MUNMAP)])
    assert (addr[rng_ev] % PAGE == 0).all() and (size[rng_ev] % PAGE == 0).all()
    assert (size[rng_ev] > 0).all()
    assert (addr[rng_ev] + size[rng_ev] <= np.uint64(1 << va_bits)).all()
    assert (pid >= 1).all()

    pids, first = np.unique(pid, return_index=True)
    _, last_rev = np.unique(pid[::-1], return_index=True)
    last = n - 1 - last_rev
    first_of = dict(zip(pids.tolist(), first.tolist(), strict=True))
    last_of = dict(zip(pids.tolist(), last.tolist(), strict=True))

    forks = np.flatnonzero(kind == Kind.FORK)
    children = addr[forks].astype(np.int64)
    assert len(np.unique(children)) == len(children), "a pid is forked twice"
    for f, child in zip(forks.tolist(), children.tolist(), strict=True):
        assert child in first_of, f"forked pid {child} never runs"
        assert first_of[child] > f, f"pid {child} has records before its FORK"
        assert first_of[int(pid[f])] < f or first_of[int(pid[f])] == f
    # every pid is either there from the start (never forked) or created by a FORK
    assert set(pids.tolist()) - set(children.tolist()) <= set(pids.tolist())
    for e in np.flatnonzero(kind == Kind.EXIT).tolist():
        p = int(pid[e])
        assert last_of[p] == e, f"pid {p} has records after its EXIT"
    for e in np.flatnonzero(kind == Kind.EXEC).tolist():
        assert first_of[int(pid[e])] <= e
    # a change of the running process is always an explicit SWITCH, and a SWITCH switches
    change = np.flatnonzero(pid[1:] != pid[:-1]) + 1
    assert (kind[change] == Kind.SWITCH).all()
    sw = np.flatnonzero(kind == Kind.SWITCH)
    sw = sw[sw > 0]
    assert (pid[sw] != pid[sw - 1]).all()


def demand_faults(t: Trace) -> np.ndarray:
    """True at each access that touches a page not mapped in its process: a first touch,
    or a touch after MUNMAP / EXEC cleared it (a FORK child inherits its parent's pages)."""
    out = np.zeros(len(t), bool)
    mapped: dict[int, set[int]] = {}
    ev = np.flatnonzero(t.kind > ACCESS).tolist() + [len(t)]
    lo = 0
    for e in ev:
        if e > lo:
            seg_pid, seg_page = t.pid[lo:e], (t.addr[lo:e] >> np.uint64(12)).astype(np.int64)
            for p in np.unique(seg_pid).tolist():
                idx = np.flatnonzero(seg_pid == p)
                pages, first = np.unique(seg_page[idx], return_index=True)
                have = mapped.setdefault(p, set())
                new = np.array([pg not in have for pg in pages.tolist()], bool)
                out[lo + idx[first[new]]] = True
                have.update(pages[new].tolist())
        if e == len(t):
            break
        k, p, a = int(t.kind[e]), int(t.pid[e]), int(t.addr[e])
        if k == Kind.MUNMAP:
            lo_pg, hi_pg = a // PAGE, (a + int(t.size[e])) // PAGE
            mapped[p] = {pg for pg in mapped.get(p, set()) if not lo_pg <= pg < hi_pg}
        elif k in (Kind.EXEC, Kind.EXIT):
            mapped[p] = set()
        elif k == Kind.FORK:
            mapped[a] = set(mapped.get(p, set()))
        lo = e + 1
    return out


# --- registry -------------------------------------------------------------------------


def test_registry_has_builtin_generators_with_documented_params():
    gens = generators()
    assert set(SMALL) <= set(gens)
    for name, spec in gens.items():
        assert set(spec.params_doc) == set(spec.defaults), name
        assert "seed" in spec.defaults, name
        assert "records" in spec.defaults or "instructions" in spec.defaults, name
        assert all("default" in text for text in spec.params_doc.values()), name
        assert spec.summary, name


@pytest.mark.parametrize("name", sorted(SMALL))
def test_determinism_size_meta_and_event_order(name):
    t = gen(name)
    assert isinstance(t, Trace)
    again = synthesize(name, **SMALL[name])
    assert t.equals(again), "same seed must give identical arrays"
    other = synthesize(name, **{**SMALL[name], "seed": 999})
    assert not t.equals(other), "another seed must give another trace"
    want = SMALL[name]["records"]
    assert abs(len(t) - want) <= 0.05 * want, (len(t), want)
    assert t.meta["source"] == "synth" and t.meta["generator"] == name
    assert set(t.meta["params"]) == set(generators()[name].defaults)
    va_bits = t.meta["params"]["va_bits"]
    check_event_order(t, va_bits)
    check_event_order(other, va_bits)
    # data records carry floor(ipr) or ceil(ipr) instructions (mean ipr), except the
    # warm-up stores that stand for initialising a whole page
    ipr = t.meta["params"]["ipr"]
    ic = t.icount[t.kind <= ACCESS]
    if name in ("chase", "phases"):
        ic = ic[ic <= np.ceil(ipr)]
    assert set(np.unique(ic).tolist()) <= {int(np.floor(ipr)), int(np.ceil(ipr))}
    assert abs(ic.mean() - ipr) < 0.05, (ic.mean(), ipr)


@pytest.mark.parametrize("name", ["chase", "stream", "churn", "compute"])
def test_multiprocess_time_slicing(name):
    t = synthesize(name, **{**SMALL[name], "processes": 3, "slice_records": 10_000})
    check_event_order(t)
    assert set(np.unique(t.pid).tolist()) == {1, 2, 3}
    assert (t.kind == Kind.SWITCH).sum() >= 3
    assert not (t.kind == Kind.FORK).any()


# --- regimes ------------------------------------------------------------------------


def test_chase_touches_its_footprint_once_then_misses_the_tlb():
    p = SMALL["chase"]
    t = gen("chase")
    pages = int(p["footprint_mib"] * 256)
    acc = np.flatnonzero(t.kind <= ACCESS)
    assert len(pages_of(t)) == pages
    # only one event (the MMAP of the span) and all first touches in the warm-up
    assert (t.kind > ACCESS).sum() == 1 and t.kind[0] == Kind.MMAP
    assert t.size[0] == p["span_mib"] << 20
    warm = acc[:pages]
    assert len(np.unique(t.addr[warm] >> np.uint64(12))) == pages
    after = acc[pages:]
    assert np.isin(t.addr[after] >> np.uint64(12), t.addr[warm] >> np.uint64(12)).all()
    # spread over the span, not packed at its start
    span_top = MMAP_BASE + (p["span_mib"] << 20)
    assert int(t.addr[acc].max()) > MMAP_BASE + 0.9 * (span_top - MMAP_BASE)
    # TLB-miss bound: within any window of 2 * 1024 accesses (two per node) no page
    # repeats, so a 512-entry LRU TLB misses on every node visit
    pg = (t.addr[after] >> np.uint64(12))[: (len(after) // 2048) * 2048].reshape(-1, 2048)
    distinct = np.array([len(np.unique(row)) for row in pg[:20]])
    assert (distinct == 1024).all()
    # ... and the page order repeats: a pointer chase walks the same cycle every pass
    first_pass = pg.reshape(-1)[: 2 * pages : 2]
    second_pass = pg.reshape(-1)[2 * pages : 4 * pages : 2]
    assert np.array_equal(first_pass, second_pass)


def test_chase_dense_when_span_is_not_larger():
    t = synthesize("chase", records=20_000, footprint_mib=4, span_mib=0)
    pg = pages_of(t)
    assert len(pg) == 1024 and pg[-1] - pg[0] == 1023


def test_compile_forks_execs_and_exits_each_child_once():
    p = SMALL["compile"]
    t = gen("compile")
    k = t.kind
    n = p["processes"]
    assert (k == Kind.FORK).sum() == n
    assert (k == Kind.EXEC).sum() == n
    assert (k == Kind.EXIT).sum() == n
    forks = np.flatnonzero(k == Kind.FORK)
    assert (t.pid[forks] == 1).all()
    heap_pages = int(p["heap_mib"] * 256)
    total_faults = 0
    for f in forks.tolist():
        child = int(t.addr[f])
        mine = np.flatnonzero(t.pid == child)
        exit_i = int(np.flatnonzero((k == Kind.EXIT) & (t.pid == child))[0])
        assert mine[0] > f and mine[-1] == exit_i
        # the parent waits: the child's records are one contiguous stretch
        assert len(mine) == exit_i - mine[0] + 1
        assert k[mine[0]] == Kind.SWITCH and k[exit_i + 1] == Kind.SWITCH
        assert t.pid[exit_i + 1] == 1
        exec_i = int(np.flatnonzero((k == Kind.EXEC) & (t.pid == child))[0])
        life = np.arange(exec_i, exit_i)
        # heap accesses stay below the current break, and the break only grows
        brk = np.where(k[life] == Kind.BRK, t.addr[life], 0)
        assert (np.diff(brk[brk > 0].astype(np.int64)) > 0).all()
        cur = np.maximum.accumulate(brk)
        acc = k[life] <= ACCESS
        heap = acc & (t.addr[life] >= HEAP_BASE) & (t.addr[life] < MMAP_BASE)
        assert (t.addr[life][heap] < cur[heap]).all()
        child_pages = pages_of(t, (t.pid == child) & (k <= ACCESS))
        assert len(child_pages) >= heap_pages
        total_faults += len(child_pages)
    # fault heavy: many first touches per instruction (far above chase after warm-up)
    per_k_instr = 1000 * total_faults / t.instructions
    assert per_k_instr > 2.0, per_k_instr


def test_churn_remaps_the_same_ranges_and_touches_them_again():
    p = SMALL["churn"]
    t = gen("churn")
    k = t.kind
    block = int(p["block_mib"] * (1 << 20))
    mm = np.flatnonzero(k == Kind.MMAP)
    mu = np.flatnonzero(k == Kind.MUNMAP)
    assert len(mm) == len(mu) >= 4
    assert (t.size[mm] == block).all() and (t.size[mu] == block).all()
    mapped: dict[int, int] = {}  # start -> index of its MMAP
    seen_again = 0
    for i in np.sort(np.concatenate([mm, mu])).tolist()[:-2]:  # the last cycle is partial
        a = int(t.addr[i])
        if k[i] == Kind.MMAP:
            assert a not in mapped
            mapped[a] = i
            continue
        assert a in mapped, "munmap of a range that was never mmapped"
        start = mapped.pop(a)
        inside = np.arange(start + 1, i)
        acc = inside[(k[inside] <= ACCESS)]
        addrs = t.addr[acc]
        assert ((addrs >= a) & (addrs < a + block)).all()
        # every page of the block is touched while mapped, first by a store
        pg = addrs >> np.uint64(12)
        assert len(np.unique(pg)) == block // PAGE
        _, first_idx = np.unique(pg, return_index=True)
        assert (k[acc[first_idx]] == Kind.STORE).all()
        if (k[:start] == Kind.MUNMAP).any() and a in t.addr[mu[mu < start]]:
            seen_again += 1
    assert seen_again >= 2, "ranges should be unmapped and mapped again"
    # no access touches a block while it is unmapped
    acc = np.flatnonzero(k <= ACCESS)
    owner = np.searchsorted(mm, acc) - 1  # the latest MMAP before each access
    assert (owner >= 0).all()
    assert (acc < mu[owner]).all()


def test_stream_sweeps_are_sequential():
    p = SMALL["stream"]
    t = gen("stream")
    mm = np.flatnonzero(t.kind == Kind.MMAP)
    assert len(mm) == p["arrays"]
    stride = generators()["stream"].defaults["stride"]
    acc = t.kind <= ACCESS
    sweeps_seen = []
    for i in mm.tolist():
        base, size = int(t.addr[i]), int(t.size[i])
        a = t.addr[acc]
        a = a[(a >= base) & (a < base + size)].astype(np.int64)
        d = np.diff(a)
        restart = a[1:] == base
        assert ((d == stride) | restart).all(), "addresses must step by the stride"
        assert a[0] == base
        sweeps_seen.append(int(restart.sum()) + 1)
    assert max(sweeps_seen) >= 3, "repeated sweeps"
    # the footprint is exactly the arrays
    assert len(pages_of(t)) == p["footprint_mib"] * 256


def test_compute_stays_in_a_small_footprint():
    p = SMALL["compute"]
    t = gen("compute")
    pg = pages_of(t)
    assert len(pg) <= p["footprint_mib"] * 256
    acc = t.kind <= ACCESS
    assert (t.addr[acc] >= HEAP_BASE).all()
    assert (t.addr[acc] < HEAP_BASE + p["footprint_mib"] * (1 << 20)).all()
    ev = np.flatnonzero(~acc)
    assert len(ev) == 1 and t.kind[ev[0]] == Kind.BRK
    # locality: most consecutive accesses stay within a 64-page neighbourhood
    d = np.abs(np.diff((t.addr[acc] >> np.uint64(12)).astype(np.int64)))
    assert (d < 64).mean() > 0.75


def test_hot_and_uniform():
    h = gen("hot")
    assert (h.kind <= ACCESS).all() and (h.pid == 1).all()
    assert len(pages_of(h)) == 32
    u = gen("uniform")
    assert (u.kind <= ACCESS).all() and (u.pid == 1).all()
    base, span = 1 << 40, 4 << 30
    assert (u.addr >= base).all() and (u.addr < base + span).all()
    pg = pages_of(u)
    assert len(pg) > 0.97 * len(u)  # 50 k draws from 1 M pages: almost all distinct
    assert pg[-1] - pg[0] > 0.9 * (span // PAGE)


@pytest.mark.parametrize("style", ["churn", "fork"])
def test_phases_alternate_tlb_and_fault_phases(style):
    p = SMALL["phases"]
    t = gen("phases", fault_style=style)
    check_event_order(t)
    starts, kinds = t.meta["phase_starts"], t.meta["phase_kinds"]
    assert kinds == ["tlb", "fault"] * (p["phases"] // 2)
    bounds = starts + [len(t)]
    seen = demand_faults(t)
    warm_pages = p["footprint_mib"] * 256
    assert seen[: starts[0]].sum() == warm_pages
    for i, kind in enumerate(kinds):
        lo, hi = bounds[i], bounds[i + 1]
        length = hi - lo
        assert abs(length - (p["records"] - warm_pages) / p["phases"]) < 0.1 * length
        faults = seen[lo:hi].sum()
        if kind == "tlb":
            assert faults == 0 and (t.pid[lo:hi] == 1).all()
            assert ((t.kind[lo:hi] <= ACCESS) | (t.kind[lo:hi] == Kind.SWITCH)).all()
        else:
            assert faults > length / 40, (faults, length)
    if style == "fork":
        n = (t.kind == Kind.FORK).sum()
        assert n >= 2 and n == (t.kind == Kind.EXEC).sum() == (t.kind == Kind.EXIT).sum()
        assert (t.pid[t.kind == Kind.FORK] == 2).all()


# --- parameters and errors --------------------------------------------------------------


@pytest.mark.parametrize(
    "name, params, words",
    [
        ("nosuch", {}, ["nosuch", "chase", "compile"]),
        ("chase", {"recs": 5}, ["recs", "records", "footprint_mib"]),
        ("chase", {"records": "many"}, ["records", "integer"]),
        ("chase", {"records": 0}, ["records", ">="]),
        ("chase", {"footprint_mib": 4096, "span_mib": 0}, ["footprint_mib", "va_bits"]),
        ("chase", {"records": 1000}, ["records", "warm-up", "footprint_mib"]),
        ("compile", {"records": 1000}, ["records", "processes", "heap_mib"]),
        ("stream", {"stride": 100}, ["stride"]),
        ("compile", {"stack_frac": 0.9, "mmap_frac": 0.5}, ["stack_frac"]),
        ("phases", {"fault_style": "spin"}, ["fault_style", "churn", "fork"]),
        ("uniform", {"va_bits": 31}, ["footprint_mib", "va_bits"]),
        ("hot", {"ipr": 0.5}, ["ipr"]),
    ],
)
def test_bad_parameters_raise_memvirt_error(name, params, words):
    with pytest.raises(MemvirtError) as e:
        synthesize(name, **params)
    for w in words:
        assert w in str(e.value)


def test_string_values_are_coerced():
    a = synthesize("hot", records="2000", ipr="3.5", seed="7")
    b = synthesize("hot", records=2000, ipr=3.5, seed=7)
    assert a.equals(b)
    assert synthesize("hot", records=2e3, seed=7).equals(b)


def test_register_generator_extension_point():
    def ramp(*, records=10, seed=0):
        n = int(records)
        return Trace(kind=np.full(n, int(Kind.LOAD), np.uint8),
                     addr=np.arange(n, dtype=np.uint64) * np.uint64(PAGE),
                     size=np.full(n, 8, np.uint64), pid=np.ones(n, np.int64),
                     icount=np.full(n, 3, np.uint32))

    register_generator("test_ramp", ramp, {"records": "records (default 10)",
                                           "seed": "unused (default 0)"})
    try:
        t = synthesize("test_ramp", records=5)
        assert len(t) == 5 and t.meta["generator"] == "test_ramp"
        with pytest.raises(ValueError):
            register_generator("test_bad", ramp, {"records": "only one documented"})
    finally:
        from memvirt.trace import synth

        synth._GENERATORS.pop("test_ramp", None)


# --- the suite and the CLI --------------------------------------------------------------


def test_default_suite_sizes():
    suite = default_suite()
    assert set(suite) == {"chase", "compile", "stream", "churn", "phases", "compute"}
    for name, entry in suite.items():
        assert entry["generator"] in generators(), name
        longer = 3 if name == "phases" else 1  # long phases, to repay a shadow refill
        assert 4_000_000 * longer <= entry["params"]["records"] <= 5_000_000 * longer
    tiny = default_suite(0.05)
    for name, entry in tiny.items():
        t = build_workload(entry)
        assert abs(len(t) - entry["params"]["records"]) < 0.06 * entry["params"]["records"]
        check_event_order(t)
        assert t.meta["generator"] == entry["generator"], name
    with pytest.raises(MemvirtError):
        default_suite(0)


def test_cli_lists_generators(capsys):
    from memvirt.cli import main

    assert main(["synth", "--list"]) == 0
    out = capsys.readouterr().out
    for name in SMALL:
        assert f"{name}:" in out
    assert "footprint_mib" in out and "fault_style" in out
    assert main(["synth", "chase", "-p", "recs=1", "-o", "x.parquet"]) == 2
    assert "recs" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("memvirt.trace.parquet") is None,
                    reason="the Parquet writer is not there yet")
def test_cli_writes_a_trace_file(tmp_path):
    from memvirt.cli import main
    from memvirt.trace.base import load_trace

    out = tmp_path / "t.parquet"
    rc = main(["synth", "compile", "--param", "records=20000", "--param", "processes=3",
               "--param", "heap_mib=0.5", "-o", str(out)])
    assert rc == 0 and out.exists()
    back = load_trace(out)
    want = synthesize("compile", records=20000, processes=3, heap_mib=0.5)
    assert back.equals(want)
    assert back.meta["generator"] == "compile"
    assert back.meta["params"]["processes"] == 3
