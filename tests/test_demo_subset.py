"""The demo's subset gives the verdicts of the full-length runs.

``memvirt demo`` runs the SPEC-like stand-ins at 1.2 x 10^8 instructions (half of them
warm-up) instead of 10^9 (10^8 warm-up), with the same footprints, patterns and rates and
the same selective-paging sampling.  Its steady state must be the full runs' steady state:
per workload, shadow over nested cycles within 1% of the full run's, the same winner (or a
tie both times), and dsp within 2% of the better static mode exactly when the full run's is.

The full-length figures are the ``rows`` of tests/data/realistic-spec-full.json, a copy of
what ``memvirt experiment realistic --no-real --levels 2 --only ...`` wrote (its command,
date and commit are in the file); re-make it when the model changes (docs/workloads.md).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pytest

from memvirt.api import simulate
from memvirt.cli import demo
from memvirt.trace.synth import synthesize
from memvirt.trace.synth.suite import demo_suite

FULL = json.loads((Path(__file__).parent / "data" / "realistic-spec-full.json").read_text())
TIE = 0.01  # SP/HAP within 1% of 1: a tie


def _full(name: str) -> dict:
    rows = [r for r in FULL["rows"] if r["workload"] == name and r["levels"] == 2]
    assert len(rows) == 1, name
    return rows[0]


def _verdict(sp_hap: float) -> str:
    return "tie" if abs(sp_hap - 1) <= TIE else ("shadow" if sp_hap < 1 else "nested")


@pytest.fixture(scope="module")
def demo_runs():
    ns = argparse.Namespace(config=None, profile=None, overrides=[], scale=1.0, policy="dsp")
    cfg = demo.demo_config(ns)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dsp's short-window warning
        for name, e in demo_suite().items():
            out[name] = {m: simulate(synthesize(e["generator"], **e["params"]), cfg, m)
                         for m in ("shadow", "nested", "selective")}
    return out


def test_the_full_runs_are_the_same_workloads():
    assert FULL["warmup_instructions"] == 100_000_000 and not FULL["quick"]
    assert {r["workload"] for r in FULL["rows"]} >= set(demo_suite())
    for r in FULL["rows"]:
        assert r["instructions"] >= 10**9 or r["category"] == "microbenchmark"


@pytest.mark.parametrize("name", list(demo_suite()))
def test_demo_verdicts_are_the_full_runs(demo_runs, name):
    r = demo_runs[name]
    full = _full(name)
    sp_hap = r["shadow"].cycles / r["nested"].cycles
    assert sp_hap == pytest.approx(full["sp_hap_steady"], rel=0.01), name
    assert _verdict(sp_hap) == _verdict(full["sp_hap_steady"]) or \
        min(abs(sp_hap - 1), abs(full["sp_hap_steady"] - 1)) < 0.002  # at the tie's edge
    dsp = r["selective"].cycles / min(r["shadow"].cycles, r["nested"].cycles)
    assert (dsp <= 1.02) == (full["dsp_vs_best"] <= 1.02), (name, dsp, full["dsp_vs_best"])
    assert dsp == pytest.approx(full["dsp_vs_best"], abs=0.02), name
