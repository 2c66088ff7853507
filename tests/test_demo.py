"""memvirt demo end to end at a tiny scale: results, plots and a report naming everything."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from memvirt.cli import main
from memvirt.report.compare import load_results
from memvirt.trace.synth.suite import default_suite

from .test_report import check_report_html

MODES = ("native", "shadow", "nested", "selective")


@pytest.mark.slow
def test_demo_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    t0 = time.perf_counter()
    assert main(["demo", "--out", str(out), "--scale", "0.02"]) == 0
    elapsed = time.perf_counter() - t0
    printed = capsys.readouterr().out
    workloads = list(default_suite(0.02))
    assert len(workloads) == 6
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
    assert data["config"]["selective"]["period_instructions"] == 20_000
    assert all(t.get("description") for t in data["traces"])
    assert elapsed < 120  # normally well under 60 s once numba's cache is warm


def test_demo_quiet_and_errors(tmp_path, capsys):
    assert main(["demo", "--scale", "0"]) == 2
    assert "--scale" in capsys.readouterr().err
    assert main(["demo", "--scale", "0.01", "--workers", "0"]) == 2


def test_demo_respects_user_period():
    import argparse

    from memvirt.cli import demo

    ns = argparse.Namespace(config=None, profile=None, overrides=[], scale=0.5)
    assert demo.demo_config(ns).selective.period_instructions == 500_000
    ns.overrides = ["selective.period_instructions=123000"]
    assert demo.demo_config(ns).selective.period_instructions == 123_000
    assert Path(demo.__file__).name == "demo.py"
