"""The VEE 2011 experiment in quick mode: the study's qualitative results on the realistic
suite's demo-length stand-ins (the same footprints and rates as the full-length runs;
tests/test_demo_subset.py holds their verdicts to the full runs').

Claims checked (reference notes, sections 2, 3 and 7) on the nehalem-2010 profile, steady
state after the warm-up:

- fault-bound work (gcc-like, and by far the fork / mmap churn microbenchmarks) runs faster
  under nested paging, TLB-miss-bound work (mcf-like) under shadow paging,
  with a 2-level and a 4-level guest;
- dsp ends within 2% of the better static mode on single-regime workloads, and beats both
  static modes on the phased workload; the cost policy too where its refill estimate is
  repaid inside the run (not on the TLB-bound stand-ins at this length: recorded below);
- the 4-level guest narrows nested paging's advantage on fault-bound work, and widens
  shadow paging's on TLB-bound work; "HAP loses most of its advantage" (at least half of
  it) is not reproduced on gcc-like (a strict expected failure, see docs/experiments.md).
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

# One stand-in per regime and the microbenchmarks (tests/test_demo_subset.py holds every
# stand-in's static verdict and dsp result to the full-length runs; this file checks the
# experiment and the study's claims, on both guests).
FAULT_SPEC = ("gcc-like",)
MICRO = ("churn-micro", "compile-micro")
FAULT = FAULT_SPEC + MICRO
TLB = ("mcf-like",)
NEUTRAL = ("bzip2-like",)
SINGLE = FAULT + TLB + NEUTRAL
WORKLOADS = [*SINGLE, "phased-like"]


@pytest.fixture(scope="module")
def results():
    return vee11.run(None, quick=True, real=False, workers=2, workloads=WORKLOADS)


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
        assert r["whole_instructions"] > r["instructions"] > 0  # warm-up left out
    kinds = {w: d["kind"] for w, d in results["workloads"].items()}
    assert kinds["mcf-like"] == "spec-like" and kinds["churn-micro"] == "microbenchmark"


@pytest.mark.parametrize("lv", [2, 4])
def test_fault_bound_work_favours_nested(results, lv):
    for wl in FAULT_SPEC:
        assert ratio(results, wl, lv) < 0.95, wl
    for wl in MICRO:
        assert ratio(results, wl, lv) < 0.5, wl  # by far: every fault exits twice under SP


@pytest.mark.parametrize("lv", [2, 4])
def test_tlb_bound_work_favours_shadow(results, lv):
    for wl in TLB:
        assert ratio(results, wl, lv) > 1.05, wl


@pytest.mark.parametrize("lv", [2, 4])
def test_neutral_work_nearly_ties(results, lv):
    for wl in NEUTRAL:  # the study: no gap on over half of SPEC
        assert 0.95 < ratio(results, wl, lv) < 1.05, wl


def test_4level_guest_narrows_nested_advantage_on_fault_bound_work(results):
    for wl in FAULT:
        r2, r4 = ratio(results, wl, 2), ratio(results, wl, 4)
        # 32-bit guests map page-table pages through kmap (HIGHPTE: trapped PTE writes and
        # INVLPGs under shadow paging), and their shadows are PAE: moving to a 4-level guest
        # removes the kmap traps, so nested paging's lead shrinks (gcc-like: from about 18%
        # to about 10%)
        assert r4 >= r2 + 0.02, (wl, r2, r4)


def test_4level_guest_widens_shadow_advantage_on_tlb_bound_work(results):
    for wl in TLB:  # the longer 2D walks
        assert ratio(results, wl, 4) > ratio(results, wl, 2) + 0.02, wl


@pytest.mark.xfail(strict=True, reason=(
    "not reproduced: 'on a 64-bit guest HAP loses most of its advantage'. On gcc-like "
    "nested paging's lead falls from about 18% to about 10%, short of half; see "
    "docs/experiments.md"))
def test_64bit_guest_hap_loses_most_of_its_advantage(results):
    for wl in FAULT_SPEC:  # nested's advantage at least halves with the 4-level guest
        assert 1 - ratio(results, wl, 4) <= 0.5 * (1 - ratio(results, wl, 2)), wl


@pytest.mark.parametrize("lv", [2, 4])
def test_dsp_within_2pct_of_better_static_mode(results, lv):
    for wl in SINGLE:
        x = runs(results, wl, lv)["selective-dsp"]["normalized"]
        assert x <= 1.02, (wl, x)


@pytest.mark.parametrize("lv", [2, 4])
def test_cost_policy_within_2pct_where_a_refill_is_repaid(results, lv):
    for wl in FAULT + NEUTRAL:
        assert runs(results, wl, lv)["selective-cost"]["normalized"] <= 1.03, wl
    # On the TLB-bound stand-ins the cost policy waits for the saving to repay a shadow
    # refill of the whole footprint (12,288 hidden faults for mcf-like's 48 MiB): longer
    # than these runs, so it stays nested.  Recorded, not a claim of the study.
    for wl in TLB:
        r = runs(results, wl, lv)["selective-cost"]
        assert r["switches"] == 0 and r["normalized"] > 1.05, wl


@pytest.mark.parametrize("lv", [2, 4])
def test_dsp_beats_both_static_modes_on_the_phased_workload(results, lv):
    r = runs(results, "phased-like", lv)["selective-dsp"]
    assert r["normalized"] < 0.98 and r["switches"] >= 2
    assert 0.2 < r["time_in_shadow"] < 0.9


def test_checks_agree_with_the_tests(results):
    by = {(c["claim"], c["workload"], str(c["levels"]), c.get("policy")): c["holds"]
          for c in results["checks"]}
    assert by[("fault-bound favours nested", "gcc-like", "2", None)]
    assert by[("tlb-bound favours shadow", "mcf-like", "4", None)]
    assert by[("4-level guest widens shadow's advantage", "mcf-like", "2->4", None)]
    assert by[("selective within 2% of the better static mode", "mcf-like", "2", "dsp")]
    assert by[("selective beats both static modes (phased)", "phased-like", "2", "dsp")]


def test_outputs(results, tmp_path):
    paths = vee11.write_outputs(results, tmp_path)
    names = {p.name for p in paths}
    assert names == {"vee11.json", "vee11_normalized.png", "vee11_modes.png", "vee11.txt"}
    data = json.loads((tmp_path / "vee11.json").read_text())
    assert data["experiment"] == "vee11" and len(data["rows"]) == len(results["rows"])
    assert (tmp_path / "vee11_normalized.png").read_bytes()[:4] == b"\x89PNG"
    assert "the study's qualitative results" in (tmp_path / "vee11.txt").read_text()


def test_cli(tmp_path, capsys):
    assert main(["experiment", "vee11", "--quick", "--only", "h264ref-like", "--workers", "1",
                 "--out", str(tmp_path), "--quiet"]) == 0
    data = json.loads((tmp_path / "vee11.json").read_text())
    assert set(data["workloads"]) == {"h264ref-like"} and len(data["rows"]) == 10
    assert data["warmup_instructions"] > 0 and data["dsp_window_instructions"] > 0
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
