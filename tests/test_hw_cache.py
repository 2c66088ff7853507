"""The set-associative LRU kernel against published cache-lab answers and a plain LRU model."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memvirt.hw.cache import simulate_cache

from .helpers import LRUCache

TRANS = Path(__file__).resolve().parent / "data" / "cachelab" / "trans.trace"


def cachelab_addresses(path: Path) -> list[int]:
    """Data addresses of a Lackey trace as the cache lab counts them: M = load then store."""
    out = []
    for line in path.read_text().splitlines():
        if not line.startswith(" "):
            continue  # "I" lines are ignored
        op, rest = line.split()
        addr = int(rest.split(",")[0], 16)
        out.extend([addr, addr] if op == "M" else [addr])
    return out


@pytest.mark.parametrize("s,E,b,hits,misses,evictions", [
    (2, 1, 3, 167, 71, 67), (2, 2, 3, 201, 37, 29), (2, 4, 3, 212, 26, 10), (5, 1, 5, 231, 7, 0),
])
def test_cachelab_published_answers(s, E, b, hits, misses, evictions):
    addrs = cachelab_addresses(TRANS)
    assert simulate_cache(np.array(addrs, np.uint64), 1 << s, E, 1 << b) == (hits, misses,
                                                                            evictions)


@settings(max_examples=60, deadline=None)
@given(
    sets_log=st.integers(0, 4), ways=st.integers(1, 8), line_log=st.integers(3, 13),
    addrs=st.lists(st.integers(0, (1 << 20) - 1), min_size=0, max_size=400),
)
def test_matches_plain_lru(sets_log, ways, line_log, addrs):
    ref = LRUCache(1 << sets_log, ways, line_log)
    for a in addrs:
        ref.access(a)
    got = simulate_cache(np.array(addrs, np.uint64), 1 << sets_log, ways, 1 << line_log)
    assert got == (ref.hits, ref.misses, ref.evictions)


@settings(max_examples=40, deadline=None)
@given(sets_log=st.integers(0, 3), ways=st.integers(1, 8),
       keys=st.lists(st.integers(0, 200), min_size=0, max_size=300),
       holes=st.lists(st.integers(0, 200), max_size=20))
def test_touch_is_lookup_then_insert(sets_log, ways, keys, holes):
    """The one-pass data-cache access equals lookup + insert-on-miss, invalidations included."""
    from memvirt.hw import cache as hwc

    a = hwc.allocate([(1 << sets_log, ways)])
    b = hwc.allocate([(1 << sets_log, ways)])
    for n, k in enumerate(keys):
        if holes and n % 7 == 3:  # punch holes so empty ways appear between full ones
            h = holes[n % len(holes)]
            hwc.invalidate(a[0], a[1], a[3], a[4], 0, h)
            hwc.invalidate(b[0], b[1], b[3], b[4], 0, h)
        hit_a = hwc.touch(a[0], a[1], a[2], a[3], a[4], a[5], 0, k)
        hit_b = hwc.lookup(b[0], b[1], b[3], b[4], b[5], 0, k) >= 0
        if not hit_b:
            hwc.insert(b[0], b[1], b[2], b[3], b[4], b[5], 0, k, 0)
        assert hit_a == hit_b
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
