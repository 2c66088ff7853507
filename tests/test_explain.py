"""memvirt explain: the pure-Python walk explanation against the compiled walkers.

With every walk cache off the counts are the textbook ones: one reference per guest
level for a 1D walk, (n+1)(m+1)-1 for a 2D walk (24 for 4/4 levels).  With caches on,
the explanation must make exactly the references, hits and misses the compiled walkers
make from the same state.
"""

from __future__ import annotations

import numpy as np
import pytest

from memvirt import counters as K
from memvirt import state as X
from memvirt.cli import main
from memvirt.config import Config
from memvirt.errors import MemvirtError
from memvirt.hw.walk import walk_1d, walk_2d, walk_shadow_pae
from memvirt.report.explain import WALK_CACHES, example_trace, explain, replay
from memvirt.trace.synth import synthesize

ADDR = 0x7F00_1234_5678


@pytest.fixture(scope="module")
def ex():
    return explain(ADDR)


def test_cache_off_counts_4_4_24(ex):
    assert ex.walk("native", False).refs == 4
    assert ex.walk("shadow", False).refs == 4
    nested = ex.walk("nested", False)
    assert nested.refs == 24
    assert nested.nested_refs == 20  # 4 EPT walks of 4 for the guest tables + 4 for the page
    assert all(s.cache == "off" for s in nested.steps if s.kind == "ref")
    tables = [s.table for s in nested.steps if s.kind == "ref"]
    assert tables == (["EPT"] * 4 + ["guest"]) * 4 + ["EPT"] * 4
    levels = [s.level for s in nested.steps if s.kind == "ref"]
    assert levels[:5] == [4, 3, 2, 1, 4] and levels[-4:] == [4, 3, 2, 1]
    for mode in ("native", "shadow"):
        w = ex.walk(mode, False)
        assert [s.level for s in w.steps if s.kind == "ref"] == [4, 3, 2, 1]
        assert [s.table for s in w.steps] == ["guest" if mode == "native" else "shadow"] * 4


def test_same_translation_with_and_without_caches(ex):
    for mode in ("native", "shadow", "nested"):
        on, off = ex.walk(mode, True), ex.walk(mode, False)
        assert on.found and off.found
        assert on.final == off.final
        assert on.refs <= off.refs
        assert on.final.endswith(f"{ADDR & 0xFFF:03x}")
    # warm caches after touching the address: the walks are short
    assert ex.walk("nested", True).refs < 24
    assert ex.walk("native", True).count("psc") == 1


def _kernel_counts(m, mode: str, slot: int, va: int, caches: bool) -> np.ndarray:
    """Counter deltas of the compiled walker on a copy of the machine state."""
    st = X.MachineState(*(a.copy() for a in m.state()))
    if not caches:
        geom, last = st.cache_geom, st.cache_last
        for cid in WALK_CACHES:
            geom[cid, 1] = 0
            geom[cid, 2] = 0
            last[cid, 0] = -1
    C = st.counters
    before = C.copy()
    if mode == "native":
        walk_1d(st, st.guest_upper, st.guest_leaf, slot, st.spaces[slot, X.SL_ROOT_GFN], va,
                st.scalars[X.S_ENTRY_BYTES])
    elif mode == "shadow" and st.scalars[X.S_PAE_SHADOW]:
        walk_shadow_pae(st, slot, va)
    elif mode == "shadow":
        walk_1d(st, st.shadow_upper, st.shadow_leaf, slot, st.spaces[slot, X.SL_SROOT], va,
                st.scalars[X.S_ENTRY_BYTES])
    else:
        walk_2d(st, slot, va)
    return C - before


@pytest.mark.parametrize("levels", [2, 4])
@pytest.mark.parametrize("trace_kind", ["example", "chase"])
def test_matches_compiled_walkers(trace_kind, levels):
    from memvirt.report.explain import explain_machine

    cfg = Config().with_overrides({"guest.levels": levels})
    if trace_kind == "example":
        va = ADDR if levels > 2 else 0x2345_6789  # a 32-bit guest needs a 32-bit address
        trace = example_trace(va)
    else:
        trace = synthesize("chase", records=30000, footprint_mib=2, span_mib=64, seed=5)
        acc = np.flatnonzero(trace.kind <= 3)
        va = int(trace.addr[acc[len(acc) // 2]])  # a page touched mid-trace: partly cached
    for mode in ("native", "shadow", "nested"):
        m, _ = replay(trace, cfg, mode)
        slot = int(m.slot_of[m.pid_ids[int(trace.pid[-1])]])
        for caches in (True, False):
            e = explain_machine(m, mode, va, slot, caches)
            d = _kernel_counts(m, mode, slot, va, caches)
            assert e.refs == d[K.WALK_REFS], (mode, caches)
            for i, level in enumerate(("L1", "L2", "L3")):
                assert e.refs_at(level) == d[K.REF_L1 + i], (mode, caches, level)
            assert e.refs_at("DRAM") == d[K.REF_DRAM], (mode, caches)
            assert e.nested_refs == d[K.WALK_REFS_NESTED], (mode, caches)
            assert e.count("psc") == d[K.PSC_HIT], (mode, caches)
            assert e.count("ntlb") == d[K.NTLB_HIT], (mode, caches)
            assert e.count("npsc") == d[K.NPSC_HIT], (mode, caches)
            bd = K.breakdown(d, cfg.cost)
            assert e.cycles == pytest.approx(bd["walk"]), (mode, caches)
            if not caches:  # closed forms: n, n (PAE shadow: 2), (n+1)(m+1)-1
                assert e.refs == {"nested": (levels + 1) * 5 - 1, "shadow": 2 if levels == 2
                                  else levels, "native": levels}[mode]


@pytest.mark.parametrize("levels, ept, page, addr, refs", [
    (2, 4, 4096, 0x0804_8123, 14),  # 32-bit guest on 4-level EPT: (2+1)(4+1)-1
    (5, 5, 4096, 0x00AB_CDEF_0123_4567, 35),  # 5/5 levels: (5+1)(5+1)-1
    (4, 4, 2097152, ADDR, 19),  # 2 MiB host pages: 3 EPT refs per gPA, (4+1)(3+1)-1
])
def test_other_geometries(levels, ept, page, addr, refs):
    cfg = Config().with_overrides({"guest.levels": levels, "host.ept_levels": ept,
                                   "host.page_size": page})
    e = explain(addr, config=cfg, modes=("native", "nested"))
    assert e.walk("native", False).refs == levels
    assert e.walk("nested", False).refs == refs


def test_unmapped_address_faults():
    tr = example_trace(0x4000_0000)
    e = explain(0x7000_0000, trace=tr, modes=("native", "nested"))
    assert any("never accesses" in n for n in e.notes)
    for w in e.walks:
        assert not w.found
        assert w.steps[-1].kind == "fault"
        assert "fault" in w.final


def test_bad_address_and_pid():
    with pytest.raises(MemvirtError, match="outside the 48-bit"):
        explain(1 << 48)
    with pytest.raises(MemvirtError, match="does not appear"):
        explain(ADDR, pid=99)


def test_cli(capsys):
    assert main(["explain", hex(ADDR), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "24 references (20 into the EPT, 4 into the guest table)" in out
    assert "(4+1)(4+1)-1 = 24" in out
    assert "EPT" in out and "shadow" in out and "PML4" in out
    assert main(["explain", "0x10000040", "--trace",
                 "synth:compute:records=3000,footprint_mib=0.25", "--quiet"]) == 0
    assert "nested" in capsys.readouterr().out.lower()


@pytest.mark.parametrize("argv, msg", [
    (["explain", "zzz"], "bad address"),
    (["explain", hex(1 << 48)], "outside the 48-bit"),
    (["explain", "0x1000", "--pid", "7"], "does not appear"),
    (["explain", "0x1000", "--trace", "synth:nope"], "unknown synth generator"),
])
def test_cli_errors(argv, msg, capsys):
    assert main(argv) == 2
    assert msg in capsys.readouterr().err
