"""The realistic-suite experiment (memvirt experiment realistic): its rows on a tiny
stand-in, checked against separate runs of the API, and its Markdown table."""

from __future__ import annotations

import pytest

from memvirt import simulate
from memvirt.config import Config
from memvirt.experiments import realistic
from memvirt.trace.synth import synthesize

TINY = {"instructions": 4_000_000, "footprint_mib": 2.0, "cold_pki": 4.0, "seed": 5}


def test_a_row_is_what_separate_runs_give():
    entry = realistic.Entry("tiny", "spec-like", ("spec", TINY), "tlb", 2.0, 1)
    row = realistic._run_one((entry, 2, 1_000_000))
    cfg = Config.load(profile=realistic.PROFILE).with_overrides(
        {"guest.levels": 2, "run.warmup_instructions": 1_000_000})
    sp = simulate(synthesize("spec", **TINY), cfg, "shadow")
    hap = simulate(synthesize("spec", **TINY), cfg, "nested")
    assert row["sp_hap_steady"] == pytest.approx(sp.cycles / hap.cycles)
    whole = sp.to_dict(samples=False)["whole_run"]["cycles"] / \
        hap.to_dict(samples=False)["whole_run"]["cycles"]
    assert row["sp_hap_whole"] == pytest.approx(whole)
    # the warm-up is left out of the steady state, not of the whole run
    assert row["instructions"] >= TINY["instructions"] > row["steady_instructions"] \
        >= TINY["instructions"] - 1_100_000
    assert row["dsp_vs_best"] >= 0.5 and row["category"] == "spec-like"


def test_entries_name_the_kinds_and_filter():
    ents = realistic.entries(quick=True, real=False, only={"mcf-like", "churn-micro"})
    assert {(e.name, e.category) for e in ents} == {("mcf-like", "spec-like"),
                                                   ("churn-micro", "microbenchmark")}


def test_markdown_table():
    res = {"profile": "nehalem-2010", "quick": False, "warmup_instructions": 10**8,
           "rows": [{"workload": "sort", "category": "real", "levels": 2,
                     "instructions": 1_100_000_000, "footprint_mib": 61.2, "processes": 1,
                     "tlb_misses_per_ki": 1.234, "faults_per_ki": 0.00123,
                     "sp_hap_steady": 0.91, "sp_hap_whole": 1.02, "dsp_vs_best": 1.004,
                     "dsp_switches": 1}]}
    text = realistic.markdown(res)
    assert "warm-up 100,000,000 instructions" in text
    assert "| sort | real | 2-level | 1.10 G | 61 | 1 | 1.23 | 0.00123 | 0.910 | 1.020 " \
        "| 1.004 | 1 |" in text
