"""The simulator's memory grows with pages touched, not with trace length."""

import numpy as np

from memvirt import state as X
from memvirt.config import Config
from memvirt.engine import Machine
from memvirt.trace.records import Trace


def state_bytes(m: Machine) -> int:
    return sum(a.nbytes for a in m.state())


def chunk(pages: int, n: int, seed: int) -> Trace:
    rng = np.random.default_rng(seed)
    addr = np.uint64(0x4000_0000) + rng.integers(0, pages, n).astype(np.uint64) * np.uint64(4096)
    return Trace(kind=np.ones(n, np.uint8), addr=addr, size=np.full(n, 8, np.uint64),
                 pid=np.ones(n, np.int64), icount=np.full(n, 3, np.uint32))


def test_state_size_depends_on_footprint_not_length():
    m = Machine(Config(), X.MODE_NESTED)
    m.run_chunk(chunk(20_000, 200_000, 0), lambda: None)
    after_one = state_bytes(m)
    for seed in range(1, 8):  # 7 more chunks over the same pages
        m.run_chunk(chunk(20_000, 200_000, seed), lambda: None)
    assert state_bytes(m) == after_one
    bigger = Machine(Config(), X.MODE_NESTED)
    bigger.run_chunk(chunk(200_000, 400_000, 0), lambda: None)
    assert state_bytes(bigger) > after_one  # more pages touched: larger tables
