"""The VEE 2011 experiment in quick mode: the study's qualitative results on the suite.

Claims checked (reference notes, sections 2 and 3) on the nehalem-2010 profile:

- fault-bound work (compile, churn) runs faster under nested paging, TLB-miss-bound work
  (chase) under shadow paging, with a 2-level and a 4-level guest;
- selective paging ends within 2% of the better static mode on single-regime workloads,
  and beats both static modes on a workload whose phases are long enough;
- the 4-level guest narrows nested paging's advantage on fault-bound work (direction only:
  memvirt reproduces it, but by less than 0.1%; "HAP loses most of its advantage" is not
  reproduced and is recorded as a strict expected failure below, see docs/experiments.md).

Real programs (gcc + valgrind) are optional here: ``@pytest.mark.valgrind``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from memvirt.api import simulate
from memvirt.cli import main
from memvirt.config import Config
from memvirt.experiments import vee11
from memvirt.trace.records import Kind, Trace

FAULT = ("compile", "churn")
TLB = ("chase",)
SINGLE = FAULT + TLB + ("compute",)
WORKLOADS = [*SINGLE, "phases-long"]


@pytest.fixture(scope="module")
def results():
    return vee11.run(None, scale=1.0, quick=True, real=False, workers=2, workloads=WORKLOADS)


def runs(results, wl, lv):
    return {r["run"]: r for r in results["rows"] if r["workload"] == wl and r["levels"] == lv}


def ratio(results, wl, lv):
    r = runs(results, wl, lv)
    return r["nested"]["cycles"] / r["shadow"]["cycles"]


def test_every_run_is_there(results):
    assert results["quick"] and results["levels"] == [2, 4]
    got = {(r["workload"], r["levels"], r["run"]) for r in results["rows"]}
    want = {(w, lv, m) for w in WORKLOADS for lv in (2, 4) for m in
            ("native", "shadow", "nested", "selective-dsp", "selective-cost")}
    assert got == want
    for r in results["rows"]:
        assert r["cycles"] > 0 and r["normalized"] >= 0


@pytest.mark.parametrize("lv", [2, 4])
def test_fault_bound_work_favours_nested(results, lv):
    for wl in FAULT:
        assert ratio(results, wl, lv) < 0.5, wl  # by far: every fault exits twice under SP


@pytest.mark.parametrize("lv", [2, 4])
def test_tlb_bound_work_favours_shadow(results, lv):
    for wl in TLB:
        assert ratio(results, wl, lv) > 1.05, wl


def test_4level_guest_narrows_nested_advantage_on_fault_bound_work(results):
    for wl in FAULT:
        r2, r4 = ratio(results, wl, 2), ratio(results, wl, 4)
        # 32-bit guests map page-table pages through kmap (HIGHPTE: trapped PTE writes and
        # INVLPGs under shadow paging), and their shadows are PAE: moving to a 4-level guest
        # removes the kmap traps, so nested paging's lead shrinks (by ~7 points on compile
        # with the quick suite); it does not vanish as in the study: see the xfail below
        assert r4 >= r2 + 0.02, (wl, r2, r4)


@pytest.mark.xfail(strict=True, reason=(
    "not reproduced: 'on a 64-bit guest HAP loses most of its advantage (longer 2D walks)'. "
    "memvirt's paging-structure caches and nested TLB absorb the extra guest levels (the "
    "TLB-miss premium is the same for 2- and 4-level guests), while the extra page-table "
    "pages of a 4-level guest add shadow-paging exits; see docs/experiments.md"))
def test_64bit_guest_hap_loses_most_of_its_advantage(results):
    for wl in FAULT:  # nested's advantage at least halves with the 4-level guest
        assert 1 - ratio(results, wl, 4) <= 0.5 * (1 - ratio(results, wl, 2)), wl
    for wl in TLB:  # and shadow's lead grows on TLB-bound work
        assert ratio(results, wl, 4) > ratio(results, wl, 2), wl


@pytest.mark.parametrize("policy", ["dsp", "cost"])
@pytest.mark.parametrize("lv", [2, 4])
def test_selective_within_2pct_of_better_static_mode(results, policy, lv):
    for wl in SINGLE:
        if policy == "cost" and wl == "chase":
            continue  # the ski-rental lag: next test
        x = runs(results, wl, lv)[f"selective-{policy}"]["normalized"]
        assert x <= 1.02, (wl, x)


def test_cost_policy_within_2pct_on_chase(results):
    # Reproduced since the shadow refill prefetches neighbouring entries as Xen does
    # (vmm.shadow_prefetch): before, the cost policy's wait for the refill to pay off left
    # it 2.9% over shadow paging.
    for lv in (2, 4):
        assert runs(results, "chase", lv)["selective-cost"]["normalized"] <= 1.02


@pytest.mark.parametrize("lv", [2, 4])
def test_selective_beats_both_static_modes_with_long_phases(results, lv):
    r = runs(results, "phases-long", lv)
    for pol in ("dsp", "cost"):
        assert r[f"selective-{pol}"]["normalized"] < 0.95, pol
        assert r[f"selective-{pol}"]["switches"] >= 2
        assert 0.2 < r[f"selective-{pol}"]["time_in_shadow"] < 0.9


def test_checks_agree_with_the_tests(results):
    by = {(c["claim"], c["workload"], str(c["levels"]), c.get("policy")): c["holds"]
          for c in results["checks"]}
    assert by[("fault-bound favours nested", "compile", "2", None)]
    assert by[("tlb-bound favours shadow", "chase", "4", None)]
    assert by[("4-level guest widens shadow's advantage", "chase", "2->4", None)]
    assert by[("selective within 2% of the better static mode", "chase", "2", "dsp")]


def test_outputs(results, tmp_path):
    paths = vee11.write_outputs(results, tmp_path)
    names = {p.name for p in paths}
    assert names == {"vee11.json", "vee11_normalized.png", "vee11_modes.png", "vee11.txt"}
    data = json.loads((tmp_path / "vee11.json").read_text())
    assert data["experiment"] == "vee11" and len(data["rows"]) == len(results["rows"])
    assert (tmp_path / "vee11_normalized.png").read_bytes()[:4] == b"\x89PNG"
    assert "the study's qualitative results" in (tmp_path / "vee11.txt").read_text()


def test_cli(tmp_path, capsys):
    assert main(["experiment", "vee11", "--quick", "--only", "compute", "--workers", "1",
                 "--out", str(tmp_path), "--quiet"]) == 0
    data = json.loads((tmp_path / "vee11.json").read_text())
    assert set(data["workloads"]) == {"compute"} and len(data["rows"]) == 10
    assert "vee11.json" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 32-bit fold
def test_fold_keeps_low_regions_and_moves_high_ones_below_3gib():
    m = vee11.fold_map(np.array([0x0, 0x1, 0x4, 0x1FF0, 0x7FFF, 0x8000], np.uint64))
    assert m[0x0] == 0x0 and m[0x1] == 0x1 and m[0x4] == 0x4  # below 3 GiB: kept
    high = [m[0x1FF0], m[0x7FFF], m[0x8000]]
    assert all(h < 0xC for h in high) and len(set(m.values())) == len(m)
    assert m[0x8000] == m[0x7FFF] + 1  # adjacent regions stay adjacent


def test_folded_trace_runs_on_a_2_level_guest():
    stack = 0x7FFD_1234_5000
    recs = [(int(Kind.MMAP), 0x7F00_0000_0000, 8192, 1, 0),
            (int(Kind.STORE), 0x7F00_0000_0008, 8, 1, 1),
            (int(Kind.STORE), 0x7F00_0000_1008, 8, 1, 1),
            (int(Kind.STORE), stack, 8, 1, 1), (int(Kind.LOAD), 0x40_0000, 4, 1, 1),
            (int(Kind.MUNMAP), 0x7F00_0000_0000, 8192, 1, 0)]
    tr = Trace.from_records(recs)
    src = vee11.Fold32Source(tr)
    folded = Trace.concat(list(src.chunks()))
    assert int(folded.addr.max()) < 0xC000_0000
    assert folded.addr[0] == folded.addr[5] and folded.addr[1] + 0x1000 == folded.addr[2]
    assert folded.addr[4] == 0x40_0000  # low addresses untouched
    assert (folded.addr & np.uint64(0xFFF)).tolist() == (tr.addr & np.uint64(0xFFF)).tolist()
    cfg = Config.load(profile="nehalem-2010").with_overrides({"guest.levels": 2})
    a = simulate(src, cfg, "nested")
    b = simulate(tr, cfg.with_overrides({"guest.levels": 4}), "nested")
    assert a.to_dict()["guest_page_faults"] == b.to_dict()["guest_page_faults"]


# ----------------------------------------------------------------------------- real programs
@pytest.mark.valgrind
def test_real_programs(tmp_path):
    if not vee11.tools_available():
        pytest.skip("gcc and valgrind are needed")
    wls = vee11.real_workloads(tmp_path, scale=0.1)
    cfg = Config.load(profile="nehalem-2010").to_dict()
    rows = [r for w in wls for lv in (2, 4) for r in vee11.run_workload(w, cfg, lv, 100_000)]
    vee11.normalize(rows)
    by = {(r["workload"], r["levels"], r["run"]): r for r in rows}
    for lv in (2, 4):
        fh = by[("forkheap", lv, "nested")]["cycles"] / by[("forkheap", lv, "shadow")]["cycles"]
        assert fh < 0.5  # a fork/fault-heavy real program favours nested paging
        hp = by[("hashprobe", lv, "shadow")]
        assert hp["tlb_misses_per_ki"] > 100  # ... and the hash probe lives on TLB misses
        assert by[("forkheap", lv, "selective-dsp")]["normalized"] <= 1.02
    assert (tmp_path / "traces").is_dir() and (tmp_path / "programs" / "forkheap.c").exists()
