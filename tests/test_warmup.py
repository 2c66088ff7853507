"""Warm-up: the first N instructions run (state warms) but are not counted.

Counts are derived by hand for a small trace; a collapsed and a full trace give the same
steady state (the warm-up ends at a sync point)."""

from __future__ import annotations

import pytest

from memvirt import simulate
from memvirt.config import Config
from memvirt.errors import TraceError
from memvirt.trace.records import Kind, Trace

S, L = int(Kind.STORE), int(Kind.LOAD)
BASE = 0x4000_0000


def warm_then_hit() -> Trace:
    # 10 stores, each to a new page (100 instructions each): 10 demand faults, 10 DTLB and
    # STLB misses; then 20 loads of those pages (100 instructions each): all DTLB hits.
    recs = [(S, BASE + p * 4096, 8, 1, 100) for p in range(10)]
    recs += [(L, BASE + (i % 10) * 4096 + 8, 8, 1, 100) for i in range(20)]
    return Trace.from_records(recs)


@pytest.mark.parametrize("mode", ["native", "shadow", "nested"])
def test_warmup_excludes_exactly_its_records(mode):
    cfg = Config().with_overrides({"run.warmup_instructions": 1000,
                                   "selective.period_instructions": 1000})
    d = simulate(warm_then_hit(), cfg, mode).to_dict()
    assert d["instructions"] == 2000 and d["whole_run"]["instructions"] == 3000
    assert d["warmup"] == {"requested": 1000, "instructions": 1000, "records": 10}
    c = d["counters"]
    assert c["loads"] == 20 and c["stores"] == 0
    assert c["dtlb_hits"] == 20 and c["dtlb_misses"] == 0 and c["walks"] == 0
    assert d["guest_page_faults"]["total"] == 0
    assert d["whole_run"]["guest_page_faults"]["total"] == 10
    assert d["vm_exits"]["total"] == 0
    assert d["whole_run"]["cycles"] > d["cycles"]
    # the samples cover the whole run; the warm-up's are flagged
    assert [s["warmup"] for s in d["samples"]] == [True, False, False]
    assert sum(s["instructions"] for s in d["samples"] if not s["warmup"]) == 2000


def test_no_warmup_whole_run_equals_steady_state():
    d = simulate(warm_then_hit(), Config(), "shadow").to_dict()
    assert d["warmup"]["instructions"] == 0
    assert d["whole_run"]["cycles"] == d["cycles"]
    assert d["whole_run"]["instructions"] == d["instructions"] == 3000


def test_warmup_longer_than_the_trace_is_an_error():
    cfg = Config().with_overrides({"run.warmup_instructions": 3000})
    with pytest.raises(TraceError, match="not more than the warm-up of 3,000"):
        simulate(warm_then_hit(), cfg, "native")


def test_warmup_ends_at_a_sync_point_collapsed_equals_full():
    from .test_collapse import collapse, full_trace

    full = full_trace(3, instructions=20_000)
    col = collapse(full)
    cfg = Config().with_overrides({"run.warmup_instructions": 7_000,
                                   "selective.period_instructions": 2_000})
    for mode in ("native", "shadow", "nested"):
        a, b = simulate(full, cfg, mode), simulate(col, cfg, mode)
        assert (a.counters == b.counters).all() and (a.whole == b.whole).all()
        assert a.warmup["instructions"] == b.warmup["instructions"] >= 7_000


def test_cli_flag_sets_the_config():
    from memvirt.cli import build_parser
    from memvirt.cli._common import config_from_args

    args = build_parser().parse_args(["run", "x.parquet", "--warmup-instructions", "5000"])
    assert config_from_args(args).run.warmup_instructions == 5000
