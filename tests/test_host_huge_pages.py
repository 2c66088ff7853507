"""Host 1 GiB pages backing guest memory (``host.page_size = 1073741824``), beside 4 KiB and
2 MiB, against hand-derived numbers.

The EPT (AMD: nested page table) maps a host page with the entry of the level that covers
its size (Intel SDM vol. 3, 28.2.2): a PTE for 4 KiB, a PDE with bit 7 set for 2 MiB, a
PDPTE with bit 7 set for 1 GiB.  Number the EPT levels from the bottom, 0 (PT) to n-1 (the
root), and let L be the host page's leaf level (L = 0, 1, 2 for 4 KiB, 2 MiB, 1 GiB).

Closed forms, every TLB, walk cache and data cache off (each access walks, each walk is
full), a g-level guest on an n-level EPT:

- one gPA -> hPA translation reads one EPT entry per level from the root (n-1) down to the
  leaf (L): n - L references (4 KiB: n, 2 MiB: n-1, 1 GiB: n-2);
- a TLB miss reads the g guest entries, and translates the gPA of each of the g guest
  tables and of the data page: g + 1 translations.  So

      walk references      = (g+1)(n-L) + g
      of them EPT references = (g+1)(n-L)

  (L = 0 gives the textbook g*n + g + n = (g+1)(n+1) - 1).

  g=4, n=4: 24 / 19 / 14 (EPT 20 / 15 / 10);  g=2, n=4: 14 / 11 / 8 (EPT 12 / 9 / 6);
  g=4, n=5: 29 / 24 / 19;  g=5, n=5: 35 / 29 / 23.

A 1D walk (native; shadow) reads g entries (a 2-level guest's PAE-format shadow: 2),
whatever the host page size.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from memvirt import counters as K
from memvirt import state as X
from memvirt.api import simulate
from memvirt.config import Config
from memvirt.engine import Machine
from memvirt.errors import ConfigError
from memvirt.report.explain import (
    example_trace,
    explain,
    explain_machine,
    print_explanation,
    replay,
)
from memvirt.trace.records import Trace

from .helpers import BASE, CACHE_LEVEL_COUNTERS, PAGE, L, S, no_caches_config, rec, trace
from .test_explain import _kernel_counts

KIB4, MIB2, GIB1 = 4096, 2097152, 1073741824
R = GIB1 // KIB4  # 262,144 4 KiB frames per 1 GiB
LEAF = {KIB4: 0, MIB2: 1, GIB1: 2}  # the EPT level that maps the host page

PAGES = 40  # spread over several guest leaf tables, so the walks are not all alike
STRIDE = 97 * PAGE


def warm_then_measure(cfg, mode):
    """Counter deltas of a measured phase that only reads mapped (and shadowed) pages."""
    warm = [rec(S, BASE + i * STRIDE) for i in range(PAGES)]
    warm += [rec(L, BASE + i * STRIDE) for i in range(PAGES)]  # fills the shadow
    measure = [rec(L, BASE + ((i * 7) % PAGES) * STRIDE + 8) for i in range(3 * PAGES)]
    a = simulate(trace(warm), cfg, mode).counters
    b = simulate(trace(warm + measure), cfg, mode).counters
    d = {name: int(b[i]) - int(a[i]) for i, name in enumerate(K.NAMES)}
    d["n"] = len(measure)
    return d


def exits(d) -> int:
    return sum(d[K.NAMES[idx]] for idx, _ in K.EXIT_REASONS.values())


# ----------------------------------------------------------------------------- 2D walks
@pytest.mark.parametrize("g, n, page, refs, ept_refs", [
    (4, 4, KIB4, 24, 20), (4, 4, MIB2, 19, 15), (4, 4, GIB1, 14, 10),
    (2, 4, KIB4, 14, 12), (2, 4, MIB2, 11, 9), (2, 4, GIB1, 8, 6),
    (4, 5, GIB1, 19, 15), (5, 5, GIB1, 23, 18),
])
def test_nested_walk_references_per_tlb_miss(g, n, page, refs, ept_refs):
    # the hand-derived numbers agree with the closed form
    assert (g + 1) * (n - LEAF[page]) + g == refs
    assert (g + 1) * (n - LEAF[page]) == ept_refs
    cfg = no_caches_config(levels=g, ept_levels=n, **{"host.page_size": page})
    d = warm_then_measure(cfg, "nested")
    assert d["guest_faults_demand"] == 0 and exits(d) == 0
    assert d["walks"] == d["n"]  # no TLB: every access is a TLB miss and walks
    assert d["walk_refs"] == refs * d["walks"]
    assert d["walk_refs_nested"] == ept_refs * d["walks"]
    assert d["nested_tlb_hits"] == 0 and d["nested_psc_hits"] == 0


@pytest.mark.parametrize("g", [2, 4])
@pytest.mark.parametrize("page", [MIB2, GIB1])
def test_nested_psc_caches_only_levels_above_the_host_page(g, page):
    """Nested PSC on (16 entries per upper EPT level), everything else off.  The deepest
    cached EPT entry is the last one above the leaf: the PML4E (its key covers 512 GiB, all
    of guest memory) with 1 GiB pages, the PDPTE (1 GiB, three keys for the 3 GiB guest)
    with 2 MiB pages: once warm, every translation hits it and reads only the leaf entry.
    Per walk: g+1 nested PSC hits, g+1 EPT references, g+1 + g references in all."""
    cfg = no_caches_config(levels=g, **{"host.page_size": page, "hw.nested_psc.entries": 16})
    d = warm_then_measure(cfg, "nested")
    assert d["walks"] == d["n"]
    assert d["nested_psc_hits"] == (g + 1) * d["walks"]
    assert d["walk_refs_nested"] == (g + 1) * d["walks"]
    assert d["walk_refs"] == (2 * g + 1) * d["walks"]


@pytest.mark.parametrize("page", [KIB4, MIB2, GIB1])
def test_nested_tlb_maps_4k_guest_frames_whatever_the_host_page(page):
    """Nested TLB on (64 entries, fully associative: more than the ~51 guest frames the trace
    uses), everything else off: once warm, every one of a walk's g+1 translations hits it,
    and a walk reads only the g guest entries."""
    cfg = no_caches_config(**{"host.page_size": page, "hw.nested_tlb.entries": 64,
                              "hw.nested_tlb.ways": 64})
    d = warm_then_measure(cfg, "nested")
    assert d["nested_tlb_hits"] == 5 * d["walks"]
    assert d["walk_refs_nested"] == 0
    assert d["walk_refs"] == 4 * d["walks"]


# ----------------------------------------------------------------------------- 1D walks
@pytest.mark.parametrize("g, native, shadow", [(2, 2, 2), (4, 4, 4)])
def test_one_dimensional_walks_ignore_the_host_page_size(g, native, shadow):
    """Native and shadow walks read g entries (a 32-bit guest's PAE shadow: the PDE and the
    PTE, 2) for every host page size; with boot population the whole run is the same."""
    runs = {}
    for page in (KIB4, MIB2, GIB1):
        cfg = no_caches_config(levels=g, **{"host.page_size": page})
        for mode, refs in (("native", native), ("shadow", shadow)):
            d = warm_then_measure(cfg, mode)
            assert d["walks"] == d["n"] and exits(d) == 0
            assert d["walk_refs"] == refs * d["walks"]
            assert d["walk_refs_nested"] == 0
            runs[mode, page] = d
    for mode in ("native", "shadow"):
        assert runs[mode, KIB4] == runs[mode, MIB2] == runs[mode, GIB1], mode


def test_native_and_shadow_runs_with_caches_on_ignore_the_host_page_size():
    """Default caches: native never sees the host; a shadow walk reads shadow pages and the
    data's host frames, all 1 + gfn at boot or host frames after the backing, so only the
    cache levels that serve references may differ, no count of walks, references or exits."""
    t = trace([rec(S, BASE + i * STRIDE) for i in range(PAGES)]
              + [rec(L, BASE + ((i * 7) % PAGES) * STRIDE) for i in range(5 * PAGES)])
    for mode in ("native", "shadow"):
        res = [simulate(t, Config().with_overrides({"host.page_size": p}), mode).counters
               for p in (KIB4, MIB2, GIB1)]
        for other in res[1:]:
            diff = [K.NAMES[i] for i in range(K.NCOUNTERS)
                    if res[0][i] != other[i] and (mode == "native" or i not in CACHE_LEVEL_COUNTERS)]
            assert diff == [], (mode, diff)


# ----------------------------------------------------------------------------- population
# The guest's first frames, handed out in this order (the top of its free stack): three in
# the first GiB of guest memory, two in the second, three in the third.
HANDED = [5000, R + 10, 2 * R + 20, 5001, 2 * R + 600, R + 11, 5002, 2 * R + 21]
# 1 GiB regions (gfn >> 18): {0, 1, 2}: 3.  2 MiB regions (gfn >> 9): 5000..5002 -> 9,
# R+10, R+11 -> 512, 2R+20, 2R+21 -> 1024, 2R+600 -> 1025: 4.  4 KiB: 8 frames.
REGIONS = {KIB4: 8, MIB2: 4, GIB1: 3}
# EPT table pages (4-level EPT; the root is not counted): a PDPT (all under one PML4E),
# with 2 MiB and 4 KiB pages a PD per GiB touched (3), with 4 KiB a PT per 2 MiB touched (4).
EPT_PAGES = {KIB4: 1 + 3 + 4, MIB2: 1 + 3, GIB1: 1}


def run_on_frames(page, mode, populate):
    """A 4-level guest's process stores to 4 pages of one leaf table: it allocates its root,
    a PDPT, a PD, a PT and 4 data frames, 8 guest frames, ``HANDED`` in order."""
    cfg = Config().with_overrides({"host.page_size": page, "host.populate": populate})
    m = Machine(cfg, X.MODES[mode])
    # never reached (the guest needs only 8), but the driver wants room for a worst-case record
    spare = list(range(6000, 7000))
    m.gfree = np.array(spare + HANDED[::-1], np.int64)  # the top (handed out first) is the end
    m.S[X.S_GFREE_TOP] = len(m.gfree)
    m.run_chunk(Trace.from_records([rec(S, BASE + i * PAGE) for i in range(4)]), lambda: None)
    assert int(m.C[K.GUEST_FRAMES]) == 8
    return m


def host_frame(m, gfn: int) -> int:
    """The host frame backing ``gfn``, read from the p2m (4 KiB: per frame; larger pages:
    one entry per 2 MiB holding its first host frame)."""
    if m.S[X.S_HOST_LEAF] == 0:
        return int(m.p2m[gfn])
    b = int(m.p2m[gfn >> 9])
    return -1 if b < 0 else b + (gfn & 511)


@pytest.mark.parametrize("page", [KIB4, MIB2, GIB1])
def test_demand_population_backs_a_host_page_per_exit(page):
    frames_per_page = page // KIB4
    m = run_on_frames(page, "nested", "demand")
    assert int(m.C[K.EXIT_EPT_VIOLATION]) == REGIONS[page]
    assert int(m.C[K.EXIT_POPULATE]) == 0
    assert int(m.C[K.HOST_FRAMES]) == REGIONS[page] * frames_per_page
    assert int(m.S[X.S_EUP_USED]) == EPT_PAGES[page]
    # host frames in use: the root (0), the backing, the EPT table pages, nothing else
    assert int(m.S[X.S_NEXT_HFN]) == 1 + REGIONS[page] * frames_per_page + EPT_PAGES[page]
    # each host page is contiguous: a guest frame keeps its offset in it; pages are disjoint
    h = {g: host_frame(m, g) for g in HANDED}
    assert all(v >= 1 for v in h.values())
    assert len(set(h.values())) == len(HANDED)
    bases = {g - g % frames_per_page: h[g] - g % frames_per_page for g in HANDED}
    assert len(bases) == REGIONS[page]
    starts = sorted(bases.values())
    assert all(b2 - b1 >= frames_per_page for b1, b2 in zip(starts, starts[1:]))
    if page == GIB1:
        assert h[5002] - h[5000] == 2 and h[2 * R + 600] - h[2 * R + 20] == 580
        assert h[R + 11] - h[R + 10] == 1


@pytest.mark.parametrize("page", [KIB4, MIB2, GIB1])
def test_demand_population_under_shadow_paging_is_populate_exits(page):
    m = run_on_frames(page, "shadow", "demand")
    assert int(m.C[K.EXIT_POPULATE]) == REGIONS[page]
    assert int(m.C[K.EXIT_EPT_VIOLATION]) == 0
    assert int(m.C[K.HOST_FRAMES]) == REGIONS[page] * (page // KIB4)


@pytest.mark.parametrize("page", [KIB4, MIB2, GIB1])
@pytest.mark.parametrize("mode", ["native", "shadow", "nested"])
def test_boot_population_has_no_population_exits(page, mode):
    m = run_on_frames(page, mode, "boot")
    assert int(m.C[K.EXIT_EPT_VIOLATION]) == int(m.C[K.EXIT_POPULATE]) == 0
    assert int(m.C[K.HOST_FRAMES]) == 0
    for g in HANDED:  # backed at boot: hfn = 1 + gfn
        assert host_frame(m, g) == 1 + g


def test_native_never_backs_frames():
    m = run_on_frames(GIB1, "native", "demand")
    assert int(m.C[K.EXIT_POPULATE]) == int(m.C[K.EXIT_EPT_VIOLATION]) == 0
    assert int(m.C[K.HOST_FRAMES]) == 0


@pytest.mark.parametrize("page, ept, mib, eup, backing", [
    # the default 3 GiB guest (786,432 frames), 4-level EPT: a PDPT, 3 PDs, 1,536 PTs
    (KIB4, 4, 3072, 1 + 3 + 1536, 786432),
    (MIB2, 4, 3072, 1 + 3, 786432),
    (GIB1, 4, 3072, 1, 786432),
    (GIB1, 5, 3072, 1 + 1, 786432),  # a 5-level EPT adds a PML4 page under the root
    # 1.5 GiB: two whole 1 GiB pages; the table page comes after the second
    (GIB1, 4, 1536, 1, 2 * R),
    # 1,537 MiB = 768.5 x 2 MiB: 769 whole 2 MiB pages; two PDs (two GiB touched)
    (MIB2, 4, 1537, 1 + 2, 769 * 512),
])
def test_boot_population_builds_the_ept_and_backs_whole_host_pages(page, ept, mib, eup, backing):
    cfg = Config().with_overrides({"host.page_size": page, "host.ept_levels": ept,
                                   "guest.memory_mib": mib, "host.populate": "boot"})
    m = Machine(cfg, X.MODE_NESTED)
    assert int(m.S[X.S_EUP_USED]) == eup
    assert int(m.S[X.S_NEXT_HFN]) == 1 + backing + eup
    last = mib * 256 - 1
    assert host_frame(m, last) == 1 + last < int(m.S[X.S_NEXT_HFN]) - eup  # below the tables


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("bad", [8192, 1 << 29, 1 << 31, 0, -4096, "1G", "1073741824", True, None])
def test_unsupported_host_page_sizes_are_clear_errors(bad):
    with pytest.raises(ConfigError, match=r"host\.page_size.*4096 \(4 KiB\), 2097152 \(2 MiB\), "
                                          r"1073741824 \(1 GiB\)"):
        Config().with_overrides({"host.page_size": bad})


def test_1gib_is_accepted_from_the_command_line_and_with_every_ept_depth():
    for ept in (4, 5):  # the only EPT depths allowed; both have the PDPT level 1 GiB needs
        cfg = Config.load(overrides=[f"host.ept_levels={ept}", "host.page_size=1073741824"])
        assert cfg.host.page_size == GIB1
    with pytest.raises(ConfigError, match=r"host\.ept_levels"):
        Config().with_overrides({"host.ept_levels": 3, "host.page_size": GIB1})


# ----------------------------------------------------------------------------- explain
@pytest.mark.parametrize("g, refs, ept_refs", [(4, 14, 10), (2, 8, 6)])
def test_explain_walks_1gib_host_pages(g, refs, ept_refs):
    va = 0x7F00_1234_5678 if g == 4 else 0x2345_6789
    cfg = Config().with_overrides({"guest.levels": g, "host.page_size": GIB1})
    e = explain(va, config=cfg, modes=("native", "shadow", "nested"))
    off = e.walk("nested", False)
    assert off.found and off.refs == refs and off.nested_refs == ept_refs
    # each EPT walk reads the PML4E and then the leaf PDPTE (levels 4, 3)
    ept_levels = [s.level for s in off.steps if s.kind == "ref" and s.table == "EPT"]
    assert ept_levels == [4, 3] * (g + 1)
    assert e.walk("native", False).refs == g
    assert e.walk("shadow", False).refs == (2 if g == 2 else g)
    # the explanation makes the compiled walker's references, with caches on and off
    m, _ = replay(example_trace(va), cfg, "nested")
    slot = int(m.slot_of[m.pid_ids[1]])
    for caches in (True, False):
        w = explain_machine(m, "nested", va, slot, caches)
        d = _kernel_counts(m, "nested", slot, va, caches)
        assert w.refs == d[K.WALK_REFS] and w.nested_refs == d[K.WALK_REFS_NESTED]
        assert w.count("npsc") == d[K.NPSC_HIT] and w.count("ntlb") == d[K.NTLB_HIT]
    out = io.StringIO()
    print_explanation(e, Console(file=out, width=200))
    assert f"nested {refs}:" in out.getvalue()
