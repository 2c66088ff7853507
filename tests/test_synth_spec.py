"""SPEC-like stand-ins (the streaming ``spec`` generator): realistic lengths, rates inside the
ranges the selective-paging study measured on SPEC CPU2006, bounded memory, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from memvirt import simulate
from memvirt.config import Config
from memvirt.errors import MemvirtError
from memvirt.trace.synth import synthesize
from memvirt.trace.synth.suite import SPEC_LIKE, microbenchmarks, spec_suite

# The study's Table 1 (SPEC CPU2006 INT, 32-bit guest): per 1,000 instructions.
TLB_RANGE = (0.02, 16.0)
FAULT_RANGE = (0.0, 0.015)


def _rates(entry, warmup: int = 0):
    # TLB misses and faults do not depend on where data accesses hit: data pricing off
    # (hw.data_caches) gives the same rates, four times faster
    cfg = Config.load(profile="nehalem-2010").with_overrides(
        {"guest.levels": 2, "selective.period_instructions": 10**9,
         "run.warmup_instructions": warmup, "hw.data_caches": False})
    d = simulate(synthesize(entry["generator"], **entry["params"]), cfg, "native").to_dict()
    return d["instructions"], d["rates"]["tlb_misses_per_ki"], d["rates"]["guest_faults_per_ki"]


@pytest.mark.parametrize("name", sorted(SPEC_LIKE))
def test_full_length_stand_ins_have_spec_rates(name):
    instr, tlb, faults = _rates(spec_suite()[name])
    assert instr >= 10**9
    assert TLB_RANGE[0] <= tlb <= TLB_RANGE[1], (name, tlb)
    assert FAULT_RANGE[0] <= faults <= FAULT_RANGE[1], (name, faults)


def test_random_cold_accesses_are_tlb_misses():
    """Random words of a footprint 64 times the STLB's reach: nearly every cold access
    misses (closed form: cold_pki x (1 - 2 MiB / 128 MiB)), hot runs never do (steady
    state: after the start-up's first touches)."""
    e = {"generator": "spec", "params": dict(instructions=100_000_000, footprint_mib=128.0,
                                             cold_pki=8.0, seed=3)}
    _, tlb, faults = _rates(e, warmup=5_000_000)
    assert faults == 0
    assert tlb == pytest.approx(8.0 * (1 - 2 / 128), rel=0.03)


def test_sequential_sweeps_miss_once_per_page():
    e = {"generator": "spec", "params": dict(instructions=100_000_000, footprint_mib=64.0,
                                             pattern="sequential", stride=256, cold_pki=16.0,
                                             seed=3)}
    _, tlb, _ = _rates(e, warmup=5_000_000)
    assert tlb == pytest.approx(16.0 / (4096 / 256), rel=0.03)


def test_streams_in_bounded_chunks_and_is_deterministic():
    src = synthesize("spec", instructions=50_000_000, footprint_mib=4.0, cold_pki=2.0, seed=9)
    chunks = list(src.chunks(1 << 16))
    assert len(chunks) > 10 and max(len(c) for c in chunks) == 1 << 16
    again = list(synthesize("spec", instructions=50_000_000, footprint_mib=4.0, cold_pki=2.0,
                            seed=9).chunks(1 << 16))
    assert all(a.equals(b) for a, b in zip(chunks, again))
    other = next(synthesize("spec", instructions=50_000_000, footprint_mib=4.0, cold_pki=2.0,
                            seed=10).chunks(1 << 16))
    assert not other.equals(chunks[0])
    total = sum(int(c.icount.sum()) for c in chunks)
    assert 50_000_000 <= total < 50_000_000 + 1000
    assert src.meta["generator"] == "spec"


def test_phases_alternate_the_rates():
    src = synthesize("spec", instructions=40_000_000, footprint_mib=8.0, cold_pki=20.0,
                     cold_pki_b=0.0, churn_pki_b=0.05, phase_instructions=10_000_000, seed=4)
    cfg = Config().with_overrides({"selective.period_instructions": 10_000_000})
    s = simulate(src, cfg, "native").samples
    tlb = [x["tlb_misses_per_ki"] for x in s]
    faults = [x["guest_faults_per_ki"] for x in s]
    assert tlb[1] < 1 < tlb[2] and tlb[3] < 1  # odd phases: no cold accesses
    assert faults[1] > 0.04 and faults[3] > 0.04 and faults[2] < 0.01


@pytest.mark.parametrize("bad, msg", [
    (dict(stride=100), "power of two"),
    (dict(cold_pki=200.0), "more than half"),
    (dict(pattern="zigzag"), "random' or 'sequential"),
    (dict(footprint_mib=1 << 30), "footprint_mib"),
])
def test_bad_parameters_are_named(bad, msg):
    with pytest.raises(MemvirtError, match=msg):
        synthesize("spec", **bad)


def test_suite_entries():
    full, quick = spec_suite(), spec_suite(quick=True)
    assert set(full) == set(quick) and len(full) >= 6
    assert all(e["category"] == "spec-like" for e in full.values())
    assert {e["regime"] for e in full.values()} >= {"tlb", "fault", "neutral", "phased"}
    for n in full:
        assert quick[n]["params"]["instructions"] * 10 == full[n]["params"]["instructions"]
    micro = microbenchmarks(0.05)
    assert all(n.endswith("-micro") and e["category"] == "microbenchmark"
               for n, e in micro.items())
    assert np.all([e["params"]["instructions"] >= 10**9 for e in full.values()])
