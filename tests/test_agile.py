"""Agile paging (``--mode agile``; Gandhi, Hill, Swift, ISCA 2016) against hand-derived
numbers and against the two modes it mixes.

Closed forms, every TLB, walk cache and data cache off, a g-level guest on an n-level EPT
whose host pages are mapped at EPT level L (0: 4 KiB, 1: 2 MiB, 2: 1 GiB):

- the guest page-table page of level p (it holds level-p entries; p = 0 is a leaf page
  table) walked nested below a switching entry, p < g - 1: the walk reads the g - 1 - p
  shadow entries above it, then p + 1 guest entries, the first table's host frame coming
  from the switching entry and each of the p tables below it, and the data page, translated
  through n - L EPT levels:  g + (p + 1)(n - L) references, (p + 1)(n - L) of them EPT's.
  (g=4, n=4, 4 KiB: 8 / 12 / 16 for p = 0 / 1 / 2.)
- the whole address space nested (p = g - 1): nested paging's walk, (g + 1)(n - L) + g.
- nothing nested: shadow paging's g references.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from memvirt import counters as K
from memvirt import state as X
from memvirt.api import simulate
from memvirt.config import Config
from memvirt.engine import Machine
from memvirt.errors import ConfigError
from memvirt.policy.agile import AgilePolicy, make_agile_policy
from memvirt.trace.synth import synthesize
from memvirt.vmm import agile

from .helpers import BASE, PAGE, L, S, no_caches_config, rec, trace

KIB4, MIB2, GIB1 = 4096, 2097152, 1073741824
LEAF = {KIB4: 0, MIB2: 1, GIB1: 2}
ALL_SHADOW = {"write_threshold": -1, "start_nested": False, "move_back": False}


def counts(m: Machine) -> dict[str, int]:
    return {name: int(m.C[i]) for i, name in enumerate(K.NAMES)}


def exits(d: dict) -> int:
    return sum(d[K.NAMES[idx]] for idx, _ in K.EXIT_REASONS.values())


def never(*_):
    raise AssertionError("no period should end")


# ----------------------------------------------------------------------------- walks
PAGES = 24
SPREAD = 1 << 30  # one page per GiB: every page in its own subtree below level 3


@pytest.mark.parametrize("g, n, page", [
    (4, 4, KIB4), (4, 4, MIB2), (4, 4, GIB1), (3, 4, KIB4), (4, 5, KIB4), (5, 5, KIB4),
    (5, 4, MIB2), (3, 5, GIB1),
])
def test_switching_point_walk_references_closed_form(g, n, page):
    """For every switching point p, a TLB miss reads g + (p+1)(n-L) entries ((g+1)(n-L) + g
    for the root), (p+1)(n-L) ((g+1)(n-L)) of them EPT entries, and exits nothing."""
    cfg = no_caches_config(levels=g, ept_levels=n, **{"host.page_size": page,
                                                      "host.populate": "boot"})
    lvl = LEAF[page]
    spread = SPREAD if g > 3 else 1 << 21
    addrs = [BASE + i * spread + (i % 7) * PAGE for i in range(PAGES)]
    warm = trace([rec(S, a) for a in addrs] + [rec(L, a) for a in addrs])
    measure = trace([rec(L, a + 8) for a in addrs] * 2)
    for p in range(g):
        m = Machine(cfg, X.MODE_AGILE, ALL_SHADOW)
        m.run_chunk(warm, never)
        st = m.state()
        slot = int(m.slot_of[m.pid_ids[1]])
        done = set()
        for a in addrs:  # move each page's level-p table (once per subtree) to nested
            key = a >> (12 + 9 * (p + 1))
            if key not in done:
                done.add(key)
                agile.to_nested(st, slot, p, a)
        before = counts(m)
        m.run_chunk(measure, never)
        d = {k: v - before[k] for k, v in counts(m).items()}
        walks = len(measure)
        assert d["walks"] == walks
        if p == g - 1:
            refs, ept = (g + 1) * (n - lvl) + g, (g + 1) * (n - lvl)
        else:
            refs, ept = g + (p + 1) * (n - lvl), (p + 1) * (n - lvl)
        assert d["walk_refs"] == walks * refs, (p, d["walk_refs"] / walks, refs)
        assert d["walk_refs_nested"] == walks * ept, p
        assert exits(d) == 0 and d["guest_faults_demand"] == 0, p
        assert int(m.C[K.AGILE_TO_NESTED]) == len(done)


def test_nothing_nested_is_a_shadow_walk():
    cfg = no_caches_config(**{"host.populate": "boot"})
    addrs = [BASE + i * 97 * PAGE for i in range(PAGES)]
    warm = [rec(S, a) for a in addrs] + [rec(L, a) for a in addrs]
    measure = [rec(L, a + 8) for a in addrs]
    d = {}
    for mode in ("shadow", "agile"):
        a = simulate(trace(warm), cfg, mode, policy="all-shadow" if mode == "agile" else None)
        b = simulate(trace(warm + measure), cfg, mode,
                     policy="all-shadow" if mode == "agile" else None)
        d[mode] = b.counters - a.counters
    assert int(d["agile"][K.WALK_REFS]) == 4 * len(measure)
    assert np.array_equal(d["agile"], d["shadow"])


# ----------------------------------------------------------------------------- extremes
def _workloads():
    return {
        "compile": synthesize("compile", records=120_000, processes=12, seed=3),
        "churn": synthesize("churn", records=120_000, seed=2),
        "chase": synthesize("chase", records=120_000, footprint_mib=24, seed=4),
    }


@pytest.fixture(scope="module")
def workloads():
    return _workloads()


@pytest.mark.parametrize("profile", ["nehalem-2010", "modern"])
@pytest.mark.parametrize("policy, mode", [("all-shadow", "shadow"), ("all-nested", "nested")])
def test_agile_extremes_equal_shadow_and_nested_exactly(workloads, profile, policy, mode):
    """Every subtree shadowed is shadow paging; every address space nested is nested paging:
    every counter equal (scans every 10^4 instructions happen and change nothing)."""
    cfg = Config.load(profile=profile, overrides={"agile.scan_instructions": 10_000})
    for name, tr in workloads.items():
        a = simulate(tr, cfg, "agile", policy=policy)
        b = simulate(tr, cfg, mode)
        diff = [K.NAMES[i] for i in np.nonzero(a.counters != b.counters)[0]]
        assert not diff, (name, diff)
        assert a.cycles == b.cycles
        assert a.agile["scans"] > 0


# ----------------------------------------------------------------------------- the policy
def _policy_trace(fill: int):
    """Stores to four pages of one leaf page table, then ``fill`` loads of the first."""
    recs = [rec(S, BASE + i * PAGE) for i in range(4)]
    recs += [rec(L, BASE + 8) for _ in range(fill)]
    return trace(recs)


def _policy_config(**over):
    base = {"host.populate": "boot", "vmm.out_of_sync": False, "vmm.shadow_prefetch": 0,
            "agile.start_nested": False, "agile.write_threshold": 1,
            "agile.move_back": True, "agile.scan_instructions": 1000}
    base.update(over)
    return no_caches_config(**base)


def test_a_leaf_table_written_more_than_once_moves_to_nested_and_back():
    """Hand-derived (4-level guest, every cache off, no out-of-sync shadows or prefetch):

    - page 0: a true fault (exit), whose guest writes the root's entry (shadowed: an exit,
      the root's first write) and three unshadowed tables' entries; then a hidden fault
      (exit) fills the shadow path.
    - pages 1 and 2: a true fault each; the leaf write to the now shadowed leaf table exits
      (its first and second writes): the second moves it to nested (its 3 shadow leaves and
      its shadow page go).
    - page 3: a fault in the nested part: the guest's, no exit; the subtree is dirty.
    - scans at 1,000 and 2,000 instructions: the first finds it dirty (and young), the second
      clean: back to shadow; the next load of page 0 is a hidden fault.
    """
    cfg = _policy_config()
    r = simulate(_policy_trace(2500), cfg, "agile")
    c = r.counters
    assert int(c[K.EXIT_PF_TRUE]) == 3
    assert int(c[K.EXIT_PTE_WRITE]) == 3
    assert int(c[K.EXIT_PF_HIDDEN]) == 2
    assert int(c[K.GPF_DEMAND]) == 4
    assert int(c[K.AGILE_TO_NESTED]) == 1
    assert int(c[K.AGILE_TO_SHADOW]) == 1
    assert int(c[K.AGILE_SCANNED]) == 2
    assert int(c[K.SHADOW_PAGES_FREED]) == 1
    assert int(c[K.SHADOW_PAGES]) == 1 + 3 + 1  # root, the hidden fault's path, the move back
    assert r.agile["scans"] == 2
    bd = r.breakdown
    assert bd["vmm_agile"] == pytest.approx(2 * cfg.cost.hv_agile_move
                                            + 2 * cfg.cost.hv_agile_scan)


def test_while_nested_loads_walk_through_the_switch():
    """Loads of the four pages between the move and the first scan: 3 shadow entries, the
    guest PTE, then the data page's 4 EPT entries: 8 references each, no exit."""
    cfg = _policy_config(**{"agile.scan_instructions": 10**6})
    base = [rec(S, BASE + i * PAGE) for i in range(4)]
    loads = [rec(L, BASE + i * PAGE + 8) for i in range(4)]
    a = simulate(trace(base), cfg, "agile").counters
    b = simulate(trace(base + loads), cfg, "agile").counters
    d = b - a
    assert int(d[K.WALK_REFS]) == 4 * 8 and int(d[K.WALK_REFS_NESTED]) == 4 * 4
    assert K.exits_total(d) == 0


def test_root_written_more_than_threshold_makes_the_whole_space_nested():
    """Threshold 0: the root's first write moves the whole address space to nested (its
    shadow root goes), so the later faults and walks are nested paging's."""
    cfg = _policy_config(**{"agile.write_threshold": 0, "agile.move_back": False})
    r = simulate(_policy_trace(8), cfg, "agile")
    c = r.counters
    assert int(c[K.AGILE_TO_NESTED]) == 1
    assert int(c[K.EXIT_PTE_WRITE]) == 1 and int(c[K.EXIT_PF_TRUE]) == 1
    assert int(c[K.EXIT_PF_HIDDEN]) == 0
    # after the move: 3 more stores and 8 loads walk nested paging's 24 references
    assert int(c[K.WALK_REFS]) >= 24 * 11


def test_short_lived_processes_stay_nested():
    """The paper's default starts every address space nested; the compile workload's
    short-lived children never get a shadow, so it exits nothing."""
    tr = synthesize("compile", records=60_000, processes=10, seed=1)
    r = simulate(tr, Config.load(profile="nehalem-2010"), "agile")
    assert K.exits_total(r.counters) == 0
    assert int(r.counters[K.AGILE_TO_SHADOW]) == 0


class HalfwayShadow(AgilePolicy):
    """A plug-in: the paper's policy, but after the first scan nothing moves to nested."""

    name = "halfway"

    def on_scan(self, delta):
        return {"write_threshold": -1} if delta["instructions"] else None


def test_plugin_policy_changes_settings_at_a_scan():
    cfg = _policy_config()
    r = simulate(_policy_trace(2500), cfg, "agile", policy=HalfwayShadow)
    assert r.policy == "halfway"
    assert r.agile["settings_changed"][0] == {"instructions": 1000,
                                              "settings": {"write_threshold": -1}}
    assert r.agile["write_threshold"] == -1


# ----------------------------------------------------------------------------- errors
def test_agile_on_a_32_bit_guest_is_a_clear_error():
    with pytest.raises(ConfigError, match="guest.levels = 2"):
        simulate(_policy_trace(1), Config().with_overrides({"guest.levels": 2}), "agile")


def test_bad_agile_policies_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown agile policy 'nosuch'.*paper"):
        make_agile_policy("nosuch")
    with pytest.raises(ConfigError, match="is not an AgilePolicy subclass"):
        make_agile_policy("memvirt.policy.dsp:DspPolicy")

    class Bad(AgilePolicy):
        def on_scan(self, delta):
            return {"scan_instructions": 5}

    with pytest.raises(ConfigError, match="on_scan must return"):
        simulate(_policy_trace(2500), _policy_config(), "agile", policy=Bad)
    with pytest.raises(ConfigError, match="write_threshold"):
        Config().with_overrides({"agile.write_threshold": -5})


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "memvirt", *args], capture_output=True,
                          text=True, timeout=600)


def test_cli_agile_settings_with_another_mode_is_an_error():
    r = _cli("run", "synth:hot:records=2000", "--mode", "native", "--set",
             "agile.write_threshold=3")
    assert r.returncode == 2 and "agile settings apply to --mode agile only" in r.stderr, r.stderr
    r = _cli("run", "synth:hot:records=2000", "--mode", "agile", "--policy", "dsp")
    assert r.returncode == 2 and "unknown agile policy 'dsp'" in r.stderr, r.stderr
    r = _cli("run", "synth:hot:records=2000", "--mode", "agile", "--set", "guest.levels=2")
    assert r.returncode == 2 and "guest.levels = 2" in r.stderr, r.stderr


def test_a_process_that_started_nested_is_shadowed_after_a_whole_interval():
    """The paper's default: the process starts nested; the scan at 1,000 instructions finds
    it young, the one at 2,000 moves it to shadow (whatever it wrote: it is not short-lived);
    its later loads of page 0 then take a hidden fault (exit) to fill the new shadow."""
    cfg = _policy_config(**{"agile.start_nested": True})
    r = simulate(_policy_trace(2500), cfg, "agile")
    c = r.counters
    assert int(c[K.AGILE_TO_SHADOW]) == 1 and int(c[K.AGILE_TO_NESTED]) == 0
    assert int(c[K.AGILE_SCANNED]) == 2
    assert int(c[K.EXIT_PF_TRUE]) == 0 and int(c[K.EXIT_PTE_WRITE]) == 0
    assert int(c[K.EXIT_PF_HIDDEN]) == 1


def test_explain_shows_an_agile_walk_through_a_switching_entry():
    from memvirt.report.explain import explain

    cfg = Config().with_overrides({"agile.start_nested": False, "host.populate": "boot"})
    ex = explain(BASE + PAGE, config=cfg, modes=("agile",))
    off = [w for w in ex.walks if not w.caches][0]
    assert off.refs == 8 and off.nested_refs == 4  # 3 shadow entries, the guest PTE, 4 EPT
    assert any("SWITCH" in s.result for s in off.steps if s.kind == "ref")


def test_compare_report_and_plots_with_an_agile_run(tmp_path):
    """compare runs agile beside the others; its results file loads, tabulates, plots and
    renders (the agile row's breakdown has its vmm_agile category)."""
    from memvirt.report.compare import Comparison, compare
    from memvirt.report.html import write_report

    tr = "synth:compile:records=30000,processes=3,heap_mib=1,seed=4"
    cfg = Config().with_overrides({"agile.start_nested": False})
    comp = compare([tr], modes=("native", "shadow", "nested", "agile"), config=cfg, workers=1,
                   progress=False)
    comp.write(tmp_path / "cmp")
    back = Comparison.load(tmp_path / "cmp")
    rows = {r["mode"]: r for r in back.rows}
    assert set(rows) == {"native", "shadow", "nested", "agile"}
    assert "cyc_vmm_agile" in rows["agile"]
    assert rows["agile"]["cyc_vmm_agile"] > 0  # its leaf tables moved to nested
    assert [p.name for p in back.plot(tmp_path / "plots")]
    html = write_report(tmp_path / "cmp", tmp_path / "r.html")
    assert "agile" in html.read_text()
