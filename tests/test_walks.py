"""Walk lengths against the closed forms: n refs for a 1D walk, (n+1)(m+1)-1 for a 2D walk."""

import pytest

from memvirt.api import simulate

from .helpers import BASE, PAGE, L, S, no_caches_config, rec, trace

PAGES = 40  # spread over several leaf tables so the walks are not all alike
STRIDE = 97 * PAGE


def warm_then_measure(cfg, mode, extra_levels_shift=0):
    """Counters of a measured phase that only reads mapped, shadowed pages (no faults)."""
    warm = [rec(S, BASE + i * STRIDE) for i in range(PAGES)]
    warm += [rec(L, BASE + i * STRIDE) for i in range(PAGES)]  # fills the shadow
    measure = [rec(L, BASE + ((i * 7) % PAGES) * STRIDE + 8) for i in range(3 * PAGES)]
    a = simulate(trace(warm), cfg, mode).to_dict()
    b = simulate(trace(warm + measure), cfg, mode).to_dict()
    d = {k: b[k] - a[k] for k in ("walks", "walk_refs", "walk_refs_nested")}
    d["faults"] = b["guest_page_faults"]["total"] - a["guest_page_faults"]["total"]
    d["exits"] = b["vm_exits"]["total"] - a["vm_exits"]["total"]
    d["n"] = len(measure)
    return d


@pytest.mark.parametrize("mode", ["native", "shadow"])
@pytest.mark.parametrize("levels", [2, 3, 4, 5])
def test_one_dimensional_walk_reads_one_entry_per_level(mode, levels):
    d = warm_then_measure(no_caches_config(levels=levels), mode)
    assert d["faults"] == 0 and d["exits"] == 0
    assert d["walks"] == d["n"]  # every access walks: no TLB
    assert d["walk_refs"] == levels * d["walks"]


@pytest.mark.parametrize("levels,ept_levels,expected", [(4, 4, 24), (2, 4, 14), (5, 5, 35),
                                                         (3, 4, 19), (4, 5, 29)])
def test_two_dimensional_walk_closed_form(levels, ept_levels, expected):
    assert (levels + 1) * (ept_levels + 1) - 1 == expected
    d = warm_then_measure(no_caches_config(levels=levels, ept_levels=ept_levels), "nested")
    assert d["faults"] == 0 and d["exits"] == 0
    assert d["walks"] == d["n"]
    assert d["walk_refs"] == expected * d["walks"]
    # the nested dimension: m references for each of the n guest tables and the data page
    assert d["walk_refs_nested"] == ept_levels * (levels + 1) * d["walks"]


def test_large_host_pages_shorten_the_nested_dimension():
    # 2 MiB host pages: the EPT walk ends one level early, (n+1)*m' + n with m' = m - 1.
    cfg = no_caches_config(**{"host.page_size": 2097152})
    d = warm_then_measure(cfg, "nested")
    assert d["walk_refs"] == (5 * 3 + 4) * d["walks"]


def test_page_walk_caches_shorten_walks():
    cfg_off = no_caches_config()
    cfg_psc = no_caches_config(**{"hw.psc.entries": 32})
    off = warm_then_measure(cfg_off, "native")
    psc = warm_then_measure(cfg_psc, "native")
    assert psc["walks"] == off["walks"]
    assert psc["walk_refs"] < off["walk_refs"]
    assert psc["walk_refs"] >= psc["walks"]  # the leaf entry is always read
