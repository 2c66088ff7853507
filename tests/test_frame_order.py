"""The guest's initial free-frame order (``guest.frame_order``): which guest frames a fresh
guest's first allocations get, checked against hand-derived frame numbers, and what the
order does to the nested-paging TLB-miss premium.

``buddy`` models Linux's order-0 allocations: per-CPU page lists refilled ``batch`` pages at
a time from buddy blocks (Linux 2.6.18 ``zone_batchsize``: 31 for zones of 512 MiB or
more), so a program's pages come in runs of consecutive frames, the runs from all over
memory: aligned runs of 32 frames in a fixed pseudo-random order."""

from __future__ import annotations

import numpy as np
import pytest

from memvirt import state as X
from memvirt.config import Config
from memvirt.engine import KERNEL_FRAMES, Machine, _initial_free_frames, free_frames
from memvirt.experiments import calibrate as cal
from memvirt.trace.records import Kind, Trace

S = int(Kind.STORE)
BASE = 0x4000_0000  # 4 MiB aligned: a 2-level guest maps the first 1,024 pages with one table
PAGE = 4096
RUN = 32  # the buddy run: the aligned power of two nearest to Linux 2.6.18's batch of 31
FRAMES = 3072 * 256  # the default 3 GiB guest


def tiny(**over) -> Config:
    return Config().with_overrides({"guest.levels": 2, **over})


def data_frames(order: str, pages: int, **over) -> list[int]:
    """The guest frame each of ``pages`` consecutive pages gets when a fresh process stores to
    them in address order (read from the guest's page table)."""
    m = Machine(tiny(**{"guest.frame_order": order, **over}), X.MODE_NATIVE)
    m.run_chunk(Trace.from_records([(S, BASE + i * PAGE, 8, 1, 1) for i in range(pages)]),
                lambda: None)
    keys, vals = m.gleaf[0::4], m.gleaf[1::4]
    vpn = {int(k) & ((1 << 45) - 1): int(v) >> 2 for k, v in zip(keys, vals) if k >= 0}
    return [vpn[(BASE >> 12) + i] for i in range(pages)]


# A fresh 2-level guest allocates the process's page directory, then the page table at the
# first store, then one frame per page: page k is allocation number k + 2.
FIRST = 2


def test_buddy_hands_out_aligned_runs_of_32_consecutive_frames():
    f = data_frames("buddy", 100)
    for k in range(100):
        a = k + FIRST  # the allocation number
        assert f[k] % RUN == a % RUN, f"page {k}: frame {f[k]} is not at offset {a % RUN} of its run"
        if k + 1 < 100 and (a + 1) % RUN:  # the next allocation is in the same run
            assert f[k + 1] == f[k] + 1
    # one base per run of allocations: 0-31 (root, table, pages 0-29), 32-63, 64-95, 96-101
    bases = [f[k] - (k + FIRST) % RUN for k in (0, 30, 62, 94)]
    assert all(b % RUN == 0 and KERNEL_FRAMES <= b < FRAMES for b in bases)
    assert len(set(bases)) == 4
    # the runs come from all over memory, not one after another
    assert any(b2 != b1 + RUN for b1, b2 in zip(bases, bases[1:]))
    assert max(bases) - min(bases) > 1024 * RUN


def test_sequential_and_scattered_orders_are_unchanged():
    # sequential: the frames right above the kernel's 16 MiB, in order
    assert data_frames("sequential", 40) == [KERNEL_FRAMES + FIRST + k for k in range(40)]
    # scattered: every frame above the kernel's, shuffled once with the fixed seed; the top
    # of the stack (the end of the array) is handed out first
    perm = np.arange(FRAMES - 1, KERNEL_FRAMES - 1, -1, dtype=np.int64)
    np.random.default_rng(0x6D656D76).shuffle(perm)
    assert np.array_equal(free_frames(FRAMES, "scattered"), perm)
    handed = perm[::-1]
    assert data_frames("scattered", 40) == handed[FIRST:FIRST + 40].tolist()
    assert handed[:5].tolist() == [220556, 492980, 210520, 592231, 83761]  # pinned
    assert np.array_equal(free_frames(FRAMES, "sequential"),
                          np.arange(FRAMES - 1, KERNEL_FRAMES - 1, -1))


def test_buddy_pool_holds_every_frame_once_and_unaligned_ends_last():
    b = free_frames(FRAMES, "buddy")
    assert len(b) == FRAMES - KERNEL_FRAMES
    assert np.array_equal(np.sort(b), np.arange(KERNEL_FRAMES, FRAMES))
    handed = b[::-1]
    runs = handed.reshape(-1, RUN)
    assert np.all(runs % RUN == np.arange(RUN)) and np.all(np.diff(runs, axis=1) == 1)
    # a pool whose kernel part does not end on a run boundary (1,000 frames: 250 for the
    # kernel): the runs cover frames 256-991, the frames 250-255 and 992-999 come last
    odd = free_frames(1000, "buddy")[::-1]
    assert np.array_equal(np.sort(odd), np.arange(250, 1000))
    body = odd[:736].reshape(-1, RUN)
    assert np.all(body % RUN == np.arange(RUN)) and body.min() == 256 and body.max() == 991
    assert odd[736:].tolist() == [250, 251, 252, 253, 254, 255, *range(992, 1000)]


def test_buddy_order_is_built_once_and_copied():
    a, b = free_frames(FRAMES, "buddy"), free_frames(FRAMES, "buddy")
    assert a is not b and a.flags.writeable and np.array_equal(a, b)
    assert _initial_free_frames(FRAMES, "buddy") is _initial_free_frames(FRAMES, "buddy")
    assert not _initial_free_frames(FRAMES, "buddy").flags.writeable


def test_buddy_reuses_a_freed_frame_first():
    m = Machine(tiny(**{"guest.frame_order": "buddy"}), X.MODE_NATIVE)
    t = Trace.from_records([(S, BASE, 8, 1, 1), (S, BASE + PAGE, 8, 1, 1),
                            (int(Kind.MUNMAP), BASE + PAGE, PAGE, 1, 0),
                            (S, BASE + 2 * PAGE, 8, 1, 1)])
    m.run_chunk(t, lambda: None)
    g = sorted((m.gleaf[1::4][m.gleaf[0::4] >= 0] >> 2).tolist())
    top = free_frames(FRAMES, "buddy")[::-1]  # root, table, A, B; C takes B's frame back
    assert g == sorted([int(top[2]), int(top[3])])


def test_unknown_order_is_rejected():
    with pytest.raises(Exception, match="frame_order"):
        tiny(**{"guest.frame_order": "random"})


def test_buddy_lowers_the_tlb_miss_premium():
    """Neighbouring pages on consecutive guest frames share the 64-byte lines of their EPT
    leaf entries (8 per line), so the EPT lookup of a data page's guest-physical address
    hits closer to the core: the 32 MiB premium falls from scattered to buddy, and further
    with fully sequential frames."""
    neh = Config.load(profile="nehalem-2010")
    prem = {o: cal.tlb_miss_marginal(neh.with_overrides({"guest.frame_order": o}), 2,
                                     footprint_mib=32.0, reads=30_000)
            for o in ("scattered", "buddy", "sequential")}
    assert prem["sequential"] < prem["buddy"] < prem["scattered"], prem
