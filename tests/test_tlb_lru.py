"""With one TLB level configured, TLB misses equal a plain LRU model's misses exactly."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from memvirt.api import simulate
from memvirt.config import Config

from .helpers import BASE, L, LRUCache, M, S, page_stream, trace


def one_level(entries, ways):
    # The VMM's own translations (its footprint at each exit) would share the TLB: off, so
    # the guest's accesses are the only ones (tests/test_fidelity.py covers the footprint).
    return Config().with_overrides({"hw.dtlb.entries": entries, "hw.dtlb.ways": ways,
                                    "hw.stlb.entries": 0, "vmm.exit_code_pages": 0,
                                    "vmm.exit_data_pages": 0})


@settings(max_examples=40, deadline=None)
@given(
    sets_log=st.integers(0, 4), ways=st.integers(1, 8),
    ops=st.lists(st.tuples(st.sampled_from([L, S, M]), st.integers(0, 300),
                           st.integers(0, 4095), st.sampled_from([1, 4, 8, 16, 64])),
                 min_size=1, max_size=300),
    mode=st.sampled_from(["native", "shadow", "nested"]),
)
def test_dtlb_misses_equal_lru(sets_log, ways, ops, mode):
    records = [(k, BASE + page * 4096 + off, size, 1, 1) for k, page, off, size in ops]
    ref = LRUCache(1 << sets_log, ways, 12)
    for a in page_stream(records):
        ref.access(a)
    res = simulate(trace(records), one_level((1 << sets_log) * ways, ways), mode).to_dict()
    assert res["tlb"]["dtlb"]["misses"] == ref.misses
    assert res["tlb"]["dtlb"]["hits"] == ref.hits
    assert res["tlb_misses"] == ref.misses  # with no L2 TLB the L1 misses start the walks


def test_large_random_trace_against_lru():
    rng = np.random.default_rng(7)
    pages = rng.zipf(1.3, 50_000) % 4096
    records = [(L, BASE + int(p) * 4096, 8, 1, 1) for p in pages]
    ref = LRUCache(16, 4, 12)
    for a in page_stream(records):
        ref.access(a)
    res = simulate(trace(records), one_level(64, 4), "native").to_dict()
    assert res["tlb"]["dtlb"]["misses"] == ref.misses
