"""The mechanisms behind the study's measurements, each against hand-derived counts or an
independent model: the cache hierarchy, data pricing, the VMM's footprint at exits, boot
population and the guest's frame pool, 32-bit guests (4-byte entries, PAE shadows, page
tables in high memory)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from memvirt import counters as K
from memvirt import simulate
from memvirt import state as X
from memvirt.config import Config
from memvirt.engine import Machine
from memvirt.errors import TraceError
from memvirt.hw import cache as hwc
from memvirt.hw.memory import lookup_line
from memvirt.report.explain import explain
from memvirt.trace.records import Kind, Trace
from memvirt.vmm.p2m import vm_exit

from .helpers import LRUCache

L, S = int(Kind.LOAD), int(Kind.STORE)
BASE = 0x4000_0000
PAGE = 4096


def tiny(**over) -> Config:
    return Config().with_overrides(over)


# ----------------------------------------------------------------------------- hierarchy
class InclusiveReference:
    """Three plain LRU caches looked up in order; a miss fills every level it missed."""

    def __init__(self, geoms):
        self.levels = [LRUCache(sets, ways, 0) for sets, ways in geoms]

    def access(self, line: int) -> int:
        for i, c in enumerate(self.levels):
            if c.access(line):
                return i
        return len(self.levels)


@settings(max_examples=30, deadline=None)
@given(lines=hst.lists(hst.integers(0, 200), min_size=1, max_size=400),
       l1=hst.sampled_from([(1, 2), (2, 2), (4, 1)]), l2=hst.sampled_from([(2, 4), (1, 8)]),
       l3=hst.sampled_from([(4, 4), (2, 16)]))
def test_levels_match_three_plain_lru_caches(lines, l1, l2, l3):
    cfg = tiny(**{"hw.l1d.entries": l1[0] * l1[1], "hw.l1d.ways": l1[1],
                  "hw.l2.entries": l2[0] * l2[1], "hw.l2.ways": l2[1],
                  "hw.l3.entries": l3[0] * l3[1], "hw.l3.ways": l3[1]})
    m = Machine(cfg, X.MODE_NATIVE)
    st = m.state()
    ref = InclusiveReference([l1, l2, l3])
    got = [int(lookup_line(st, np.int64(x), True)) for x in lines]
    assert got == [ref.access(x) for x in lines]


def test_walk_references_are_priced_at_the_level_that_served_them():
    """TLBs and walk caches off, 4-level guest: every access walks 4 references.  After
    the page is mapped, each walk's 4 lines are in the L1D: k more accesses cost
    k x (walk_base + 4 x l1d_latency) exactly."""
    over = {"hw.itlb.entries": 0, "hw.dtlb.entries": 0, "hw.stlb.entries": 0,
            "hw.psc.entries": 0, "hw.data_caches": False, "cost.l1d_latency": 3.0,
            "cost.l2_latency": 100.0, "cost.l3_latency": 1000.0, "cost.dram_latency": 1e5}
    cfg = tiny(**over)
    warm = Trace.from_records([(S, BASE, 8, 1, 1), (L, BASE, 8, 1, 1)])
    full = Trace.from_records([(S, BASE, 8, 1, 1)] + [(L, BASE, 8, 1, 1)] * 11)
    a, b = simulate(warm, cfg, "native"), simulate(full, cfg, "native")
    d = b.counters - a.counters
    assert d[K.WALKS] == 10 and d[K.WALK_REFS] == 40 and d[K.REF_L1] == 40
    assert b.breakdown["walk"] - a.breakdown["walk"] == 10 * (cfg.cost.walk_base + 4 * 3.0)


def test_data_accesses_go_through_the_caches():
    """A page's 64 lines loaded once each (a collapsed record with its lines bitmap), then
    again: the first pass misses to DRAM, the second hits the L1D (64 lines fit)."""
    all_lines = (1 << 64) - 1
    recs = [(S, BASE, 8, 1, 1),  # maps the page (its line 0 is now in the caches)
            (L, BASE + 64, 8, 1, 64, 63, all_lines & ~1),  # lines 1..63 once each
            (L, BASE, 8, 1, 64, 64, all_lines)]  # every line again
    d = simulate(Trace.from_records(recs), tiny(), "native").to_dict()["counters"]
    assert d["data_dram"] == 64 and d["data_l1"] == 64
    assert d["data_l2"] == d["data_l3"] == 0


def test_data_pricing_off_leaves_data_at_the_flat_cpi():
    t = Trace.from_records([(S, BASE + i * 64, 8, 1, 1) for i in range(64)])
    r = simulate(t, tiny(**{"hw.data_caches": False}), "native").to_dict()
    assert r["cycles_breakdown"]["memory"] == 0
    assert sum(r["counters"][f"data_{x}"] for x in ("l1", "l2", "l3", "dram")) == 0


# ----------------------------------------------------------------------------- VMM footprint
def _guest_fill(m, cid, keys):
    tag, stamp, val, geom, last, clock = m.caches
    for k in keys:
        hwc.insert(tag, stamp, val, geom, last, clock, cid, np.int64(k), np.int64(0))


def _present(m, cid, key) -> bool:
    tag, stamp, val, geom, last, clock = m.caches
    b = int(geom[cid, 0])
    n = int(geom[cid, 1] * geom[cid, 2])
    return bool(np.any(tag[b:b + n] == key))


@pytest.mark.parametrize("vpid", [True, False])
def test_an_exit_evicts_what_the_vmm_touches(vpid):
    """A fully associative 4-entry DTLB full of guest entries; an exit whose handler
    touches 2 VMM data pages evicts the 2 least recently used guest entries (with VPID;
    without it the exit flushes everything); a second exit finds the VMM's entries there."""
    cfg = tiny(**{"hw.dtlb.entries": 4, "hw.dtlb.ways": 4, "hw.stlb.entries": 0,
                  "hw.vpid": vpid, "vmm.exit_code_pages": 0, "vmm.exit_data_pages": 2,
                  "vmm.exit_lines": 0})
    m = Machine(cfg, X.MODE_SHADOW)
    guest = [(1 << 45) | p for p in range(4)]  # slot 1, pages 0..3, oldest first
    _guest_fill(m, hwc.DTLB, guest)
    st = m.state()
    vm_exit(st, K.EXIT_CR3)
    assert m.C[K.VMM_TLB_FILLS] == 2
    kept = [_present(m, hwc.DTLB, k) for k in guest]
    assert kept == ([False, False, True, True] if vpid else [False] * 4)
    vm_exit(st, K.EXIT_CR3)
    assert m.C[K.VMM_TLB_FILLS] == (2 if vpid else 4)  # VPID: still there; else reloaded


def test_an_exit_evicts_guest_lines():
    cfg = tiny(**{"hw.l1d.entries": 4, "hw.l1d.ways": 4, "vmm.exit_code_pages": 0,
                  "vmm.exit_data_pages": 0, "vmm.exit_lines": 3})
    m = Machine(cfg, X.MODE_SHADOW)
    st = m.state()
    for line in range(4):
        lookup_line(st, np.int64(line), True)
    vm_exit(st, K.EXIT_CR3)
    assert m.C[K.VMM_LINE_FILLS] == 3
    assert [_present(m, hwc.L1D, line) for line in range(4)] == [False, False, False, True]


def test_shadow_exits_make_the_guest_miss_its_tlb_again():
    """The same trace: under nested paging no exit disturbs the TLBs; under shadow paging
    the exits of the guest's page faults evict its entries, and it misses more (the study's
    Table 3: gcc had 3x the TLB misses under shadow paging)."""
    hot = [(L, BASE + (i % 60) * PAGE, 8, 1, 5) for i in range(2000)]  # ~the whole DTLB
    fresh = [(S, BASE + (100 + i) * PAGE, 8, 1, 5) for i in range(200)]
    recs = []
    for i in range(200):  # a fault every 10 hot accesses
        recs += hot[10 * i:10 * i + 10] + [fresh[i]]
    t = Trace.from_records(recs)
    quiet = {"vmm.exit_code_pages": 0, "vmm.exit_data_pages": 0, "vmm.exit_lines": 0}
    sh = simulate(t, tiny(), "shadow").to_dict()["tlb"]["dtlb"]["misses"]
    sh0 = simulate(t, tiny(**quiet), "shadow").to_dict()["tlb"]["dtlb"]["misses"]
    ne = simulate(t, tiny(), "nested").to_dict()["tlb"]["dtlb"]["misses"]
    assert sh0 == ne  # without the footprint the TLBs see the same accesses
    assert sh > 1.3 * ne


# ----------------------------------------------------------------------------- host memory
def test_boot_population_means_no_ept_violations():
    t = Trace.from_records([(S, BASE + i * PAGE, 8, 1, 1) for i in range(50)])
    boot = simulate(t, tiny(**{"host.populate": "boot"}), "nested").to_dict()
    demand = simulate(t, tiny(**{"host.populate": "demand"}), "nested").to_dict()
    assert boot["ept_violations"] == 0 and boot["counters"]["host_frames"] == 0
    # demand: root + 3 page-table pages + 50 data frames, one exit each (4-level guest)
    assert demand["ept_violations"] == 1 + 3 + 50
    assert demand["counters"]["host_frames"] == 54


def test_frames_come_from_the_pool_and_are_reused():
    """sequential: the first frames above the kernel's 16 MiB, in order; a freed frame is
    the next one handed out (LIFO)."""
    cfg = tiny(**{"guest.frame_order": "sequential", "guest.levels": 2})
    m = Machine(cfg, X.MODE_NATIVE)
    t = Trace.from_records([(S, BASE, 8, 1, 1), (S, BASE + PAGE, 8, 1, 1),
                            (int(Kind.MUNMAP), BASE + PAGE, PAGE, 1, 0),
                            (S, BASE + 2 * PAGE, 8, 1, 1)])
    m.run_chunk(t, lambda: None)
    # root, page table, data A, data B (freed), then data C takes B's frame
    g = m.gleaf[1::4][m.gleaf[0::4] >= 0] >> 2
    assert sorted(g.tolist()) == [4096 + 2, 4096 + 3]
    scattered = Machine(tiny(), X.MODE_NATIVE).gfree
    assert len(scattered) == 3072 * 256 - 4096 and not np.all(np.diff(scattered) < 0)


def test_running_out_of_guest_memory_is_a_clear_error():
    cfg = tiny(**{"guest.memory_mib": 16})  # 4,096 frames, 3,072 for processes
    t = Trace.from_records([(S, BASE + i * PAGE, 8, 1, 1) for i in range(3200)])
    with pytest.raises(TraceError, match="ran out of memory.*guest.memory_mib"):
        simulate(t, cfg, "native")


# ----------------------------------------------------------------------------- 32-bit guests
def test_32_bit_entries_are_4_bytes_1024_per_table():
    va = (0x21 << 22) | (1023 << 12)  # the last entry of its page table
    e = explain(va, config=tiny(**{"guest.levels": 2}), modes=("native",))
    leaf = [s for s in e.walk("native", False).steps if s.kind == "ref"][-1]
    assert leaf.paddr & 4095 == ((va >> 12) & 1023) * 4 == 4092
    e4 = explain(0x7F00_0000_0000 + 511 * PAGE, config=tiny(), modes=("native",))
    leaf4 = [s for s in e4.walk("native", False).steps if s.kind == "ref"][-1]
    assert leaf4.paddr & 4095 == 511 * 8


def test_xen_shadows_a_32_bit_guest_with_pae_tables():
    va = 0x9ABC_D123
    e = explain(va, config=tiny(**{"guest.levels": 2}), modes=("shadow",))
    refs = [s for s in e.walk("shadow", False).steps if s.kind == "ref"]
    assert len(refs) == 2  # PDPTEs in registers: the page directory and the page table
    assert refs[0].paddr & 4095 == ((va >> 21) & 511) * 8
    assert refs[1].paddr & 4095 == ((va >> 12) & 511) * 8
    off = explain(va, config=tiny(**{"guest.levels": 2, "vmm.pae_shadows": False}),
                  modes=("shadow",))
    refs2 = [s for s in off.walk("shadow", False).steps if s.kind == "ref"]
    assert len(refs2) == 2 and refs2[1].paddr & 4095 == ((va >> 12) & 1023) * 4


def test_highmem_page_tables_trap_under_shadow_only():
    """Each demand fault of a 32-bit guest maps its page table with kmap_atomic: under
    shadow paging one more trapped PTE write and one INVLPG exit; under nested paging no
    exit, only the guest's own PTE write and INVLPG."""
    t = Trace.from_records([(S, BASE + i * PAGE, 8, 1, 1) for i in range(40)])
    on, off = tiny(**{"guest.levels": 2}), tiny(**{"guest.levels": 2, "guest.highpte": False})
    a = simulate(t, on, "shadow").to_dict()
    b = simulate(t, off, "shadow").to_dict()
    assert a["counters"]["highpte_maps"] == 40 and b["counters"]["highpte_maps"] == 0
    da = a["vm_exits"]["by_reason"]
    db = b["vm_exits"]["by_reason"]
    assert da["invlpg"] - db["invlpg"] == 40
    # the kmap write unsyncs the fixmap's page table (out-of-sync shadows, the default)...
    assert da["unsync"] - db["unsync"] == 40 and da["pte_write"] == db["pte_write"]
    # ... or, without them, is emulated
    c = simulate(t, tiny(**{"guest.levels": 2, "vmm.out_of_sync": False}), "shadow").to_dict()
    d = simulate(t, tiny(**{"guest.levels": 2, "guest.highpte": False,
                            "vmm.out_of_sync": False}), "shadow").to_dict()
    assert c["vm_exits"]["by_reason"]["pte_write"] - d["vm_exits"]["by_reason"]["pte_write"] == 40
    n_on = simulate(t, on, "nested").to_dict()
    n_off = simulate(t, off, "nested").to_dict()
    assert n_on["vm_exits"]["total"] == n_off["vm_exits"]["total"] == 0
    assert n_on["counters"]["invlpgs"] - n_off["counters"]["invlpgs"] == 40
    assert not tiny(**{"guest.levels": 4}).guest.uses_highpte
