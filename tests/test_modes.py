"""Shadow and nested paging against hand-computed expectations on small hand-made traces.

Configuration: 4-level guest and EPT, VPID and PCID on, out-of-sync shadows off unless a
test says otherwise.  The expected exits are derived in the comments from the rules in
the reference (section 1): guest page-table pages are write-protected once shadowed, a
page fault exits, CR3 loads and INVLPG exit; the VMM backs a guest frame on first touch.
"""

import json

import pytest

from memvirt.api import simulate
from memvirt.config import Config

from .helpers import BASE, EXIT, FORK, MUNMAP, PAGE, SWITCH, L, S, rec, trace

# Guest memory backed on first touch (KVM-like): the derivations count those exits too.
CFG = Config().with_overrides({"vmm.out_of_sync": False, "host.populate": "demand"})
A, B, C = BASE, BASE + PAGE, BASE + 2 * PAGE


def exits(res):
    return res.to_dict()["vm_exits"]["by_reason"]


def touch_three():
    return [rec(S, A), rec(S, B), rec(S, C)]


def test_demand_faults_and_munmap_under_shadow():
    t = trace(touch_three() + [rec(MUNMAP, A, 3 * PAGE), rec(S, A)])
    e = exits(simulate(t, CFG, "shadow"))
    # first record: CR3 load (1 exit) building the shadow root.
    # A: true fault (1); the guest allocates 3 page-table pages + 1 data frame (4 populate
    #    exits); it links the new level-3 table into the root, which is shadowed (1 PTE-write
    #    exit); the new lower tables are not shadowed yet; the retry finds the shadow empty:
    #    hidden fault (1) fills the path.
    # B, C: true fault (1 each), one new data frame (1 populate each), the leaf write hits the
    #    shadowed leaf table (1 PTE-write exit each) and is propagated: no hidden fault.
    # munmap of 3 pages: 3 leaf clears trap (3), 3 <= 33 pages so 3 INVLPGs exit (3).
    # A again: true fault (1), the frame comes back from the free list already backed,
    #    leaf write traps (1) and is propagated.
    assert e == {"pf_true": 4, "pf_hidden": 1, "pte_write": 1 + 2 + 3 + 1, "cr3_load": 1,
                 "invlpg": 3, "ept_violation": 0, "populate": 7, "unsync": 0}


def test_nested_never_exits_for_faults_cr3_or_invlpg():
    t = trace(touch_three() + [rec(MUNMAP, A, 3 * PAGE), rec(S, A),
                               rec(L, A, pid=2), rec(L, A, pid=1), rec(L, A, pid=2)])
    r = simulate(t, CFG, "nested").to_dict()
    e = r["vm_exits"]["by_reason"]
    assert e["pf_true"] == e["pf_hidden"] == e["pte_write"] == 0
    assert e["cr3_load"] == e["invlpg"] == e["populate"] == 0
    # Only first touches of guest frames exit.  Process 1: root + 3 tables + 3 data frames
    # (7).  munmap frees the 3 data frames (LIFO free list); A's new frame reuses one, and
    # process 2's root and first table reuse the other two; its other 2 tables and its data
    # frame are new (3).
    assert e["ept_violation"] == r["ept_violations"] == 7 + 3
    assert r["guest_page_faults"]["demand"] == 5
    assert r["counters"]["cr3_loads"] == 4 and r["counters"]["invlpgs"] == 3


def test_context_switches_exit_only_under_shadow():
    recs = [rec(S, A, pid=1), rec(S, B, pid=2)]
    recs += [rec(L, A if i % 2 == 0 else B, pid=1 + i % 2) for i in range(10)]
    t = trace(recs)
    sh = simulate(t, CFG, "shadow").to_dict()
    ne = simulate(t, CFG, "nested").to_dict()
    # pid changes: 1 (start), ->2, then 10 records alternating starting with pid 1: 10 more
    assert sh["counters"]["cr3_loads"] == ne["counters"]["cr3_loads"] == 12
    assert sh["vm_exits"]["by_reason"]["cr3_load"] == 12
    assert ne["vm_exits"]["by_reason"]["cr3_load"] == 0


def test_fork_and_cow_under_shadow():
    t = trace(touch_three() + [rec(FORK, 2), rec(L, A, pid=2), rec(S, A, pid=2),
                               rec(EXIT, 0, 0, pid=2)])
    base = exits(simulate(trace(touch_three()), CFG, "shadow"))
    e = exits(simulate(t, CFG, "shadow"))
    d = {k: e[k] - base[k] for k in e}
    # fork: 3 parent leaf entries write-protected in a shadowed table (3 PTE-write exits);
    #   the child's root and 3 tables are new frames (4 populate); the guest flushes its TLB
    #   by reloading CR3 (1).
    # child load A: CR3 load (1), empty shadow: hidden fault (1).
    # child store A: read-only in the shadow, COW in the guest: true fault (1); a new frame
    #   (1 populate); the leaf write hits the child's now-shadowed leaf table (1); the guest
    #   INVLPGs the old translation (1).
    # child exit: the first teardown write to its shadowed tables exits (1, early unshadow).
    assert d == {"pf_true": 1, "pf_hidden": 1, "pte_write": 3 + 1 + 1, "cr3_load": 1 + 1,
                 "invlpg": 1, "ept_violation": 0, "populate": 4 + 1, "unsync": 0}
    r = simulate(t, CFG, "shadow").to_dict()
    assert r["guest_page_faults"] == {"total": 4, "demand": 3, "cow": 1}


def test_out_of_sync_leaf_tables_cut_pte_write_exits():
    t = trace(touch_three() + [rec(S, BASE + 3 * PAGE), rec(MUNMAP, A, 4 * PAGE)])
    sync = exits(simulate(t, CFG, "shadow"))
    oos = exits(simulate(t, Config(), "shadow"))
    # In sync: 3 leaf writes (B, C, D) + 4 clears trap.  Out of sync: only the first leaf
    # write (B) traps and unsyncs the table (an unsync exit, not an emulated write); C and
    # D then miss in the stale shadow (2 hidden faults); the clears do not trap.
    assert sync["pte_write"] == 1 + 3 + 4 and sync["unsync"] == 0
    assert oos["pte_write"] == 1 and oos["unsync"] == 1
    assert oos["pf_hidden"] == sync["pf_hidden"] + 2


def test_shadow_matches_native_without_page_table_changes():
    """After warm-up, shadow has the same TLB misses and walk references as native."""
    cfg = Config().with_overrides({"hw.pcid": False})
    pages = [BASE + i * 37 * PAGE for i in range(600)]
    warm = [rec(S, p) for p in pages] + [rec(L, p) for p in pages]
    # a switch to another process and back flushes the TLBs and PSCs in both modes
    flush = [rec(SWITCH, 0, 0, pid=2), rec(L, A, pid=2), rec(SWITCH, 0, 0, pid=1)]
    measure = [rec(L, pages[(i * 13) % 600] + 64) for i in range(5000)]
    out = {}
    for mode in ("native", "shadow"):
        a = simulate(trace(warm + flush), cfg, mode).to_dict()
        b = simulate(trace(warm + flush + measure), cfg, mode).to_dict()
        out[mode] = {k: b[k] - a[k] for k in ("tlb_misses", "walks", "walk_refs")}
        assert b["vm_exits"]["total"] == a["vm_exits"]["total"]
        assert b["guest_page_faults"] == a["guest_page_faults"]
    assert out["native"]["tlb_misses"] > 1000
    assert out["native"] == out["shadow"]


@pytest.mark.parametrize("mode", ["native", "shadow", "nested"])
def test_results_are_bit_identical(mode):
    recs = touch_three() + [rec(FORK, 2), rec(S, A, pid=2), rec(S, A), rec(MUNMAP, B, PAGE)]
    r1 = simulate(trace(recs), None, mode).to_dict()
    r2 = simulate(trace(recs), None, mode).to_dict()
    assert json.dumps(r1, sort_keys=True) == json.dumps(r2, sort_keys=True)


def test_breakdown_adds_up_exactly():
    r = simulate(trace(touch_three() + [rec(MUNMAP, A, PAGE)]), None, "shadow").to_dict()
    total = 0.0
    for v in r["cycles_breakdown"].values():
        total += v
    assert total == r["cycles"]
    assert r["cycles_breakdown"]["vmm_pf_true"] > 0


def test_hidden_fault_prefetches_neighbouring_entries():
    # Parent maps 10 consecutive pages: one hidden fault for the first (its new tables were
    # not shadowed yet, as in the first test), the others propagate.  It forks; the child
    # reads all 10.  The child's shadow starts empty: without prefetch each page is a
    # hidden fault; with Xen's prefetch the first hidden fault also shadows the next 9
    # guest entries of the same leaf table (the parent's had nothing mapped to prefetch).
    pages = [BASE + i * PAGE for i in range(10)]
    recs = [rec(S, p) for p in pages] + [rec(FORK, 2)] + [rec(L, p, pid=2) for p in pages]
    off = simulate(trace(recs), CFG.with_overrides({"vmm.shadow_prefetch": 0}), "shadow")
    on = simulate(trace(recs), CFG.with_overrides({"vmm.shadow_prefetch": 32}), "shadow")
    assert exits(off)["pf_hidden"] == 1 + 10
    assert exits(on)["pf_hidden"] == 1 + 1
    assert on.to_dict()["counters"]["shadow_prefetched"] == 9
    short = simulate(trace(recs), CFG.with_overrides({"vmm.shadow_prefetch": 4}), "shadow")
    assert exits(short)["pf_hidden"] == 1 + 2  # child: 1 + 4 prefetched, then 1 + 4 more
