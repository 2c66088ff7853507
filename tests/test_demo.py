"""memvirt demo end to end at a tiny scale: results, plots and a report naming everything."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from memvirt.cli import main
from memvirt.report.compare import load_results
from memvirt.trace.synth.suite import POLICY_PERIOD, demo_suite

from .test_report import check_report_html

MODES = ("native", "shadow", "nested", "selective")


@pytest.mark.slow
def test_demo_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    t0 = time.perf_counter()
    assert main(["demo", "--out", str(out), "--scale", "0.02"]) == 0
    elapsed = time.perf_counter() - t0
    printed = capsys.readouterr().out
    workloads = list(demo_suite(0.02))
    assert len(workloads) == 6 and "mcf-like" in workloads
    for w in workloads:
        assert w in printed
    assert "report.html" in printed
    for f in ("results.json", "results.csv", "results.parquet", "normalized.png",
              "breakdown.png", "report.html"):
        assert (out / f).exists(), f
    for w in workloads:
        assert (out / f"timeline_{w}.png").exists(), w
    check_report_html(out / "report.html", workloads, MODES)
    data = load_results(out)
    assert {(r["trace"], r["mode"]) for r in data["rows"]} == {
        (w, m) for w in workloads for m in MODES}
    assert data["policy"] == "dsp"
    assert data["config"]["selective"]["period_instructions"] == POLICY_PERIOD
    assert data["config"]["run"]["warmup_instructions"] == 1_200_000  # 0.02 of the demo's
    assert data["config"]["guest"]["levels"] == 2
    assert all(t.get("description") for t in data["traces"])
    assert elapsed < 120  # normally well under 60 s once numba's cache is warm


def test_demo_quiet_and_errors(tmp_path, capsys):
    assert main(["demo", "--scale", "0"]) == 2
    assert "--scale" in capsys.readouterr().err
    assert main(["demo", "--scale", "0.01", "--workers", "0"]) == 2


def test_demo_respects_user_choices():
    import argparse

    from memvirt.cli import demo

    def cfg(*overrides, policy="dsp", profile=None):
        ns = argparse.Namespace(config=None, profile=profile, overrides=list(overrides),
                                scale=1.0, policy=policy)
        return demo.demo_config(ns)

    c = cfg()
    assert c.selective.period_instructions == POLICY_PERIOD and c.guest.levels == 2
    assert c.selective.policy_params == {"window": 10_000_000}
    assert cfg("selective.period_instructions=123000").selective.period_instructions == 123_000
    assert cfg("guest.levels=4").guest.levels == 4
    assert cfg("run.warmup_instructions=5").run.warmup_instructions == 5
    assert cfg(policy="cost").selective.policy_params == {}  # dsp's window is dsp's
    assert cfg(profile="modern").hw.stlb.entries != cfg().hw.stlb.entries
    assert Path(demo.__file__).name == "demo.py"
