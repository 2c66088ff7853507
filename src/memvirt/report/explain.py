"""Explain one page walk, reference by reference, from the simulated machine's state.

``explain(address, trace=None, config=None, pid=None)`` replays a trace (or a tiny
built-in example that touches ``address``) three times -- natively, under shadow
paging and under nested paging -- and then describes the walk a TLB miss on
``address`` would make in each machine: which table is read (guest, shadow or EPT),
at which level, at which physical address (gPA/hPA), whether the PTE cache has the
line and where in the cache hierarchy it was found (L1, L2, L3 or DRAM), and what the entry
points to.  Each walk is shown twice: with the walk caches
as the replay left them (paging-structure caches, nested TLB, nested PSC, PTE cache)
and with all of them off, which gives the textbook counts: ``levels`` references for a
one-dimensional walk, ``(n+1)(m+1)-1`` (24 for 4/4 levels) for a two-dimensional one.

This module is pure Python: it reads the machine's arrays (layout in
``memvirt.state``, ``memvirt.guest.pagetable`` and ``memvirt.hw.cache``) and mirrors
the walkers of ``memvirt.hw.walk`` on a *copy* of the cache arrays, so explaining never
changes the machine.  Tests check it against the compiled walkers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import state as X
from ..errors import MemvirtError
from ..guest.pagetable import STRIDE
from ..hw import cache as hwc

LEVEL_NAMES = {1: "PT", 2: "PD", 3: "PDPT", 4: "PML4", 5: "PML5"}
PSC_NAMES = {2: "PDE cache", 3: "PDPTE cache", 4: "PML4E cache", 5: "PML5E cache"}
WALK_CACHES = (*(hwc.PSC0 + lv for lv in range(1, 5)), hwc.NTLB,
               *(hwc.NPSC0 + lv for lv in range(1, 5)), hwc.L1D, hwc.L2C, hwc.L3C)
CACHE_LEVELS = ("L1", "L2", "L3", "DRAM")  # hw/memory.py LEVEL_* order


def make_key(space: int, level: int, prefix: int) -> int:
    """As ``guest.pagetable.make_key``."""
    return (space << 48) | (level << 45) | prefix


def level_name(level: int) -> str:
    """1-based level (1 = the leaf page table) -> x86 name."""
    return f"L{level} ({LEVEL_NAMES.get(level, '?')})"


# ----------------------------------------------------------------------------- data


@dataclass
class Step:
    """One event of a walk.  ``kind``: "ref" (a memory reference), "psc" (a
    paging-structure-cache hit), "ntlb" (nested TLB hit), "npsc" (nested PSC hit) or
    "fault" (a non-present entry ends the walk)."""

    kind: str
    table: str = ""  # "guest", "shadow", "EPT" (for refs)
    level: int = 0  # 1-based level of the entry read / cached
    paddr: int | None = None  # physical address of the entry read (hPA; PA natively)
    gpa: int | None = None  # its guest-physical address (guest-table reads under EPT)
    cache: str = ""  # where the line was: "L1", "L2", "L3", "DRAM", or "off" (caches off)
    purpose: str = ""  # what the reference is for
    result: str = ""  # what the entry gives
    ref_no: int | None = None  # 1-based reference number (refs only)


@dataclass
class WalkExplanation:
    mode: str  # native, shadow or nested
    caches: bool
    address: int
    steps: list[Step] = field(default_factory=list)
    found: bool = False
    final: str = ""
    walk_base: float = 0.0
    cost: object = None

    @property
    def refs(self) -> int:
        return sum(1 for s in self.steps if s.kind == "ref")

    def refs_at(self, level: str) -> int:
        """References served by ``level`` (L1, L2, L3, DRAM; "off" counts as DRAM)."""
        return sum(1 for s in self.steps if s.kind == "ref"
                   and (s.cache == level or (level == "DRAM" and s.cache == "off")))

    @property
    def nested_refs(self) -> int:
        return sum(1 for s in self.steps if s.kind == "ref" and s.table == "EPT")

    def count(self, kind: str) -> int:
        return sum(1 for s in self.steps if s.kind == kind)

    @property
    def cycles(self) -> float:
        """Walk cycles under the cost model (as ``counters.breakdown``'s ``walk``)."""
        c = self.cost
        return (c.walk_base + self.refs_at("L1") * c.l1d_latency + self.refs_at("L2") * c.l2_latency
                + self.refs_at("L3") * c.l3_latency + self.refs_at("DRAM") * c.dram_latency
                + self.count("psc") * c.psc_hit + self.count("ntlb") * c.nested_tlb_hit)


@dataclass
class Explanation:
    address: int
    pid: int
    source: str  # what was replayed
    records: int
    guest_levels: int
    ept_levels: int
    host_page: int
    walks: list[WalkExplanation]
    notes: list[str] = field(default_factory=list)

    def walk(self, mode: str, caches: bool) -> WalkExplanation:
        for w in self.walks:
            if w.mode == mode and w.caches == caches:
                return w
        raise KeyError((mode, caches))


# ----------------------------------------------------------------------------- mirror


class _Caches:
    """A copy of the machine's set-associative structures with ``hw.cache``'s lookup and
    insert; with ``enabled=False`` the walk caches behave as if they had no entries."""

    def __init__(self, caches, enabled: bool):
        tag, stamp, val, geom, last, clock = caches
        self.tag, self.stamp, self.val = tag.copy(), stamp.copy(), val.copy()
        self.geom, self.last, self.clock = geom.copy(), last.copy(), clock.copy()
        if not enabled:
            for cid in WALK_CACHES:
                self.geom[cid, 1] = 0
                self.geom[cid, 2] = 0
                self.last[cid, 0] = hwc.EMPTY

    def lookup(self, cid: int, key: int) -> int:
        # the compiled structure code itself, on this copy's arrays
        return int(hwc.lookup(self.tag, self.stamp, self.geom, self.last, self.clock, cid,
                              np.int64(key)))

    def peek(self, cid: int, key: int) -> int:
        """Is ``key`` present (no LRU update)?"""
        sets = int(self.geom[cid, 1])
        if sets == 0:
            return -1
        ways = int(self.geom[cid, 2])
        b = int(self.geom[cid, 0]) + (key & int(self.geom[cid, 3])) * ways
        for w in range(ways):
            if self.tag[b + w] == key:
                return b + w
        return -1

    def insert(self, cid: int, key: int, value: int) -> None:
        hwc.insert(self.tag, self.stamp, self.val, self.geom, self.last, self.clock, cid,
                   np.int64(key), np.int64(value))


def _find(table: np.ndarray, key: int) -> int:
    """Slot of ``key`` in a ``guest.pagetable`` hash table, or -1 (a linear scan: the
    same answer as the hashed ``find``, since live keys are unique)."""
    hits = np.flatnonzero(table[0::STRIDE] == key)
    return int(hits[0]) if len(hits) else -1


class _Walker:
    """Mirror of ``hw/walk.py`` over one machine's state."""

    def __init__(self, m, caches_on: bool, expl: WalkExplanation):
        self.S = m.S
        self.m = m
        self.c = _Caches(m.caches, caches_on)
        self.on = caches_on
        self.e = expl
        self.n = int(m.S[X.S_LEVELS])
        self.bits = int(m.S[X.S_BITS])
        self.ebytes = int(m.S[X.S_ENTRY_BYTES])  # guest entries: 4 bytes in a 32-bit guest

    # -- helpers
    def shift(self, lv: int) -> int:
        return 12 + self.bits * lv

    def index(self, va: int, lv: int) -> int:
        return (va >> self.shift(lv)) & ((1 << self.bits) - 1)

    def ref(self, paddr: int, **kw) -> None:
        """One walk reference through the hierarchy (as ``hw.memory.lookup_line``)."""
        line = np.int64(paddr >> 6)
        c = self.c
        level = 3
        first = hwc.L1D if int(self.S[X.S_WALK_L1D]) else hwc.L2C
        for lvl, cid in enumerate((hwc.L1D, hwc.L2C, hwc.L3C)):
            if cid < first or int(c.geom[cid, 1]) == 0:
                continue
            if hwc.touch(c.tag, c.stamp, c.val, c.geom, c.last, c.clock, cid, line):
                level = lvl
                break
        cache = CACHE_LEVELS[level] if self.on else "off"
        self.e.steps.append(Step("ref", paddr=paddr, cache=cache, ref_no=self.e.refs + 1, **kw))

    def hfn_of(self, gfn: int) -> int:
        p2m = self.m.p2m
        if self.S[X.S_HOST_LEAF] == 0:
            return int(p2m[gfn]) if gfn < len(p2m) else -1
        j = gfn >> 9
        if j >= len(p2m) or p2m[j] < 0:
            return -1
        return int(p2m[j]) + (gfn & 511)

    # -- one-dimensional walk (native: guest table; shadow: shadow table)
    def walk_1d(self, up, leaf, slot: int, root: int, va: int, table_name: str) -> int:
        n = self.n
        lv = n - 1
        table = root
        phys = "hPA" if table_name == "shadow" else "PA"
        for probe in range(1, n):
            i = self.c.lookup(hwc.PSC0 + probe, make_key(slot, probe, va >> self.shift(probe)))
            if i >= 0:
                lv = probe - 1
                table = int(self.c.val[i])
                self.e.steps.append(Step(
                    "psc", table=table_name, level=probe + 1,
                    purpose=f"{PSC_NAMES.get(probe + 1, 'PSC')}: gVA "
                    f"{_range(va, self.shift(probe))}",
                    result=f"{LEVEL_NAMES[lv + 1]} at {phys} 0x{table << 12:x}; "
                    f"skips {n - 1 - lv} level{'s' if n - 1 - lv > 1 else ''}"))
                break
        while True:
            paddr = (table << 12) + self.index(va, lv) * self.ebytes
            k = make_key(slot, lv, va >> self.shift(lv))
            if lv == 0:
                i = _find(leaf, k)
                if i < 0:
                    res = "not present"
                else:
                    v = int(leaf[i * STRIDE + 1])
                    frame = v >> 1 if table_name == "shadow" else v >> 2
                    res = f"page at {phys} 0x{frame << 12:x}"
                self.ref(paddr, table=table_name, level=1, result=res)
                return i
            i = _find(up, k)
            nxt = int(up[i * STRIDE + 1]) if i >= 0 else -1
            self.ref(paddr, table=table_name, level=lv + 1,
                     result=(f"{LEVEL_NAMES[lv]} at {phys} 0x{nxt << 12:x}" if i >= 0
                             else "not present"))
            if i < 0:
                return -1
            table = nxt
            self.c.insert(hwc.PSC0 + lv, k, table)
            lv -= 1

    # -- PAE-format shadow of a 2-level guest (as hw.walk.walk_shadow_pae)
    def walk_shadow_pae(self, slot: int, va: int) -> int:
        m, c = self.m, self.c
        pde_key = make_key(slot, 1, va >> 21)
        i = c.lookup(hwc.PSC0 + 1, pde_key)
        if i >= 0:
            table = int(c.val[i])
            self.e.steps.append(Step(
                "psc", table="shadow", level=2, purpose=f"PDE cache: gVA {_range(va, 21)}",
                result=f"PT at hPA 0x{table << 12:x}; skips the page directory"))
        else:
            root = int(m.slots[slot, X.SL_SROOT])
            j = _find(m.sup, make_key(slot, 1, va >> 22))
            table = int(m.sup[j * STRIDE + 1]) + ((va >> 21) & 1) if j >= 0 else -1
            self.ref(((root + ((va >> 30) & 3)) << 12) + ((va >> 21) & 511) * 8,
                     table="shadow", level=2,
                     purpose="PAE shadow page directory (its pointer is in a PDPTE register)",
                     result=(f"PT at hPA 0x{table << 12:x}" if j >= 0 else "not present"))
            if j < 0:
                return -1
            c.insert(hwc.PSC0 + 1, pde_key, table)
        i = _find(m.sleaf, make_key(slot, 0, va >> 12))
        res = (f"page at hPA 0x{(int(m.sleaf[i * STRIDE + 1]) >> 1) << 12:x}" if i >= 0
               else "not present")
        self.ref((table << 12) + ((va >> 12) & 511) * 8, table="shadow", level=1, result=res)
        return i

    # -- nested dimension
    def translate_gpa(self, gfn: int, what: str) -> int:
        c = self.c
        i = c.lookup(hwc.NTLB, gfn)
        if i >= 0:
            h = int(c.val[i])
            self.e.steps.append(Step("ntlb", table="EPT", purpose=f"gPA 0x{gfn << 12:x} "
                                     f"({what})",
                                     result=f"hPA 0x{h << 12:x}; EPT walk skipped"))
            return h
        m = int(self.S[X.S_EPT_LEVELS])
        leaf = int(self.S[X.S_HOST_LEAF])
        lv = m - 1
        table = int(self.S[X.S_EPT_ROOT])
        for probe in range(leaf + 1, m):
            j = c.lookup(hwc.NPSC0 + probe, make_key(0, probe, gfn >> (9 * probe)))
            if j >= 0:
                lv = probe - 1
                table = int(c.val[j])
                self.e.steps.append(Step(
                    "npsc", table="EPT", level=probe + 1,
                    purpose=f"gPA 0x{gfn << 12:x} ({what})",
                    result=f"EPT {LEVEL_NAMES[lv + 1]} at hPA 0x{table << 12:x}"))
                break
        h = -1
        while True:
            paddr = (table << 12) + ((gfn >> (9 * lv)) & 511) * 8
            purpose = f"gPA 0x{gfn << 12:x} ({what})"
            if lv == leaf:
                h = self.hfn_of(gfn)
                self.ref(paddr, table="EPT", level=lv + 1, purpose=purpose,
                         result=(f"page at hPA 0x{h << 12:x}" if h >= 0
                                 else "not backed: EPT violation"))
                break
            k = make_key(0, lv, gfn >> (9 * lv))
            e = _find(self.m.eup, k)
            nxt = int(self.m.eup[e * STRIDE + 1]) if e >= 0 else -1
            self.ref(paddr, table="EPT", level=lv + 1, purpose=purpose,
                     result=(f"EPT {LEVEL_NAMES[lv]} at hPA 0x{nxt << 12:x}" if e >= 0
                             else "not present: EPT violation"))
            if e < 0:
                break
            table = nxt
            c.insert(hwc.NPSC0 + lv, k, table)
            lv -= 1
        if h >= 0:
            c.insert(hwc.NTLB, gfn, h)
        return h

    # -- two-dimensional walk
    def walk_2d(self, slot: int, va: int) -> int:
        m, c, n = self.m, self.c, self.n
        gup = m.gup
        lv = n - 1
        tgfn = int(m.slots[slot, X.SL_ROOT_GFN])
        thfn = -1
        for probe in range(1, n):
            i = c.lookup(hwc.PSC0 + probe, make_key(slot, probe, va >> self.shift(probe)))
            if i >= 0:
                lv = probe - 1
                thfn = int(c.val[i])
                j = _find(gup, make_key(slot, probe, va >> self.shift(probe)))
                tgfn = int(gup[j * STRIDE + 1]) if j >= 0 else -1
                self.e.steps.append(Step(
                    "psc", table="guest", level=probe + 1,
                    purpose=f"{PSC_NAMES.get(probe + 1, 'PSC')}: gVA "
                    f"{_range(va, self.shift(probe))} (holds the hPA)",
                    result=f"{LEVEL_NAMES[lv + 1]} at hPA 0x{thfn << 12:x}; skips "
                    f"{n - 1 - lv} level{'s' if n - 1 - lv > 1 else ''} and their EPT walks"))
                break
        return self.nested_part(slot, va, lv, thfn, tgfn)

    def nested_part(self, slot: int, va: int, lv: int, thfn: int, tgfn: int) -> int:
        """The guest table from level ``lv`` (at hPA ``thfn``, or gPA ``tgfn`` translated
        first when ``thfn`` < 0) down, two-dimensionally (as ``hw.walk._walk_nested``)."""
        m, c = self.m, self.c
        gup, gleaf = m.gup, m.gleaf
        flag = X.AGILE_GUEST if int(self.S[X.S_MODE]) == X.MODE_AGILE else 0
        while True:
            if thfn < 0:
                thfn = self.translate_gpa(tgfn, f"guest {LEVEL_NAMES[lv + 1]}")
                if thfn < 0:
                    return -1
            off = self.index(va, lv) * self.ebytes
            paddr = (thfn << 12) + off
            gpa = (tgfn << 12) + off if tgfn >= 0 else None
            k = make_key(slot, lv, va >> self.shift(lv))
            if lv == 0:
                i = _find(gleaf, k)
                g = int(gleaf[i * STRIDE + 1]) >> 2 if i >= 0 else -1
                self.ref(paddr, gpa=gpa, table="guest", level=1,
                         result=(f"page at gPA 0x{g << 12:x}" if i >= 0
                                 else "not present"))
                if i >= 0:
                    self.translate_gpa(g, "data page")
                return i
            i = _find(gup, k)
            nxt = int(gup[i * STRIDE + 1]) if i >= 0 else -1
            self.ref(paddr, gpa=gpa, table="guest", level=lv + 1,
                     result=(f"{LEVEL_NAMES[lv]} at gPA 0x{nxt << 12:x}"
                             if i >= 0 else "not present"))
            if i < 0:
                return -1
            tgfn = nxt
            thfn = self.translate_gpa(tgfn, f"guest {LEVEL_NAMES[lv]}")
            if thfn < 0:
                return -1
            c.insert(hwc.PSC0 + lv, k, thfn | flag)
            lv -= 1

    # -- agile walk (as hw.walk.walk_agile)
    def walk_agile(self, slot: int, va: int) -> tuple[int, bool]:
        """Returns (leaf slot or -1, whether the leaf is the guest's)."""
        m, c, n = self.m, self.c, self.n
        if int(m.slots[slot, X.SL_AGILE_NESTED]):
            return self.walk_2d(slot, va), True
        lv = n - 1
        table = int(m.slots[slot, X.SL_SROOT])
        for probe in range(1, n):
            i = c.lookup(hwc.PSC0 + probe, make_key(slot, probe, va >> self.shift(probe)))
            if i >= 0:
                lv = probe - 1
                table = int(c.val[i])
                guest = bool(table & X.AGILE_GUEST)
                self.e.steps.append(Step(
                    "psc", table="guest" if guest else "shadow", level=probe + 1,
                    purpose=f"{PSC_NAMES.get(probe + 1, 'PSC')}: gVA "
                    f"{_range(va, self.shift(probe))}",
                    result=f"{'guest ' if guest else ''}{LEVEL_NAMES[lv + 1]} at hPA "
                    f"0x{(table & (X.AGILE_GUEST - 1)) << 12:x}; skips {n - 1 - lv} "
                    f"level{'s' if n - 1 - lv > 1 else ''}"))
                break
        while not table & X.AGILE_GUEST:
            paddr = (table << 12) + self.index(va, lv) * 8
            k = make_key(slot, lv, va >> self.shift(lv))
            if lv == 0:
                i = _find(m.sleaf, k)
                self.ref(paddr, table="shadow", level=1,
                         result=(f"page at hPA 0x{(int(m.sleaf[i * STRIDE + 1]) >> 1) << 12:x}"
                                 if i >= 0 else "not present"))
                return i, False
            i = _find(m.sup, k)
            if i < 0:
                self.ref(paddr, table="shadow", level=lv + 1, result="not present")
                return -1, False
            nxt = int(m.sup[i * STRIDE + 1])
            switch = int(m.sup[i * STRIDE + 2]) == X.AGILE_SWITCH
            self.ref(paddr, table="shadow", level=lv + 1,
                     result=(f"SWITCH: guest {LEVEL_NAMES[lv]} at hPA 0x{nxt << 12:x}, "
                             "walked nested below" if switch
                             else f"{LEVEL_NAMES[lv]} at hPA 0x{nxt << 12:x}"))
            table = nxt | (X.AGILE_GUEST if switch else 0)
            c.insert(hwc.PSC0 + lv, k, table)
            lv -= 1
        j = _find(m.gup, make_key(slot, lv + 1, va >> self.shift(lv + 1)))
        tgfn = int(m.gup[j * STRIDE + 1]) if j >= 0 else -1
        return self.nested_part(slot, va, lv, table & (X.AGILE_GUEST - 1), tgfn), True


def _range(va: int, shift: int) -> str:
    lo = (va >> shift) << shift
    return f"0x{lo:x}-0x{lo + (1 << shift) - 1:x}"


# ----------------------------------------------------------------------------- driver


def example_trace(address: int, va_bits: int = 48):
    """A tiny trace whose process touches the pages around ``address`` and then
    ``address`` itself (so every table on its walk exists and the caches are warm)."""
    from ..trace.records import Kind, Trace

    page = address >> 12
    limit = 1 << (va_bits - 12)
    lo = max(0, page - 16)
    hi = min(limit, lo + 32)
    lo = max(0, hi - 32)
    recs = [(int(Kind.MMAP), lo << 12, (hi - lo) << 12, 1, 0)]
    recs += [(int(Kind.STORE), p << 12, 8, 1, 3) for p in range(lo, hi)]
    recs += [(int(Kind.LOAD), ((p << 12) + 64) & ~7, 8, 1, 3) for p in range(lo, hi)]
    recs += [(int(Kind.LOAD), address, 1, 1, 3)]
    return Trace.from_records(recs, meta={"name": "example", "source": "memvirt explain",
                                          "command": f"built-in example touching 0x{address:x}"})


def replay(trace, config, mode: str):
    """A ``Machine`` in ``mode`` after running the whole trace; also returns the pid of the
    last access record per page (dict vpn -> pid is too big: returns a function)."""
    from ..engine import Machine
    from ..trace.base import open_trace

    settings = None
    if mode == "agile":  # (no scans: a replay has no periods)
        from ..api import check_agile
        from ..policy.agile import make_agile_policy

        check_agile(config)
        settings = make_agile_policy(None, config).settings()
    m = Machine(config, X.MODES[mode], settings)
    src = open_trace(trace)

    def no_period():  # static modes never stop for periods (the boundary is 2**62)
        m.boundary = np.int64(2**62)

    for chunk in src.chunks():
        m.run_chunk(chunk, no_period)
    return m, src


def _last_pid_touching(trace, vpn: int) -> tuple[int | None, int | None, int]:
    """(pid of the last access to page ``vpn``, pid of the last record, records)."""
    from ..trace.base import open_trace

    last_touch = None
    last_any = None
    n = 0
    for ch in open_trace(trace).chunks():
        n += len(ch)
        if not len(ch):
            continue
        last_any = int(ch.pid[-1])
        hit = np.flatnonzero((ch.kind <= 3) & ((ch.addr >> np.uint64(12)) == np.uint64(vpn)))
        if len(hit):
            last_touch = int(ch.pid[hit[-1]])
    return last_touch, last_any, n


def _slot_of(m, pid: int) -> int:
    d = m.pid_ids.get(pid)
    if d is None:
        raise MemvirtError(f"process {pid} does not appear in the trace")
    if int(m.alive[d]) != 1:
        raise MemvirtError(f"process {pid} has exited by the end of the trace; pick a "
                           "process alive at the end with --pid")
    return int(m.slot_of[d])


def explain_machine(m, mode: str, address: int, slot: int, caches: bool) -> WalkExplanation:
    """The walk for ``address`` in address space ``slot`` of machine ``m`` (in ``mode``)."""
    e = WalkExplanation(mode=mode, caches=caches, address=address, cost=m.config.cost)
    w = _Walker(m, caches, e)
    va = int(address)
    if mode == "native":
        i = w.walk_1d(m.gup, m.gleaf, slot, int(m.slots[slot, X.SL_ROOT_GFN]), va, "guest")
        e.found = i >= 0
        if e.found:
            frame = int(m.gleaf[i * STRIDE + 1]) >> 2
            e.final = f"gVA 0x{va:x} -> PA 0x{(frame << 12) | (va & 4095):x}"
    elif mode == "shadow":
        root = int(m.slots[slot, X.SL_SROOT])
        if root < 0:
            e.final = "no shadow table for this process yet (built at its next CR3 load)"
            return e
        if int(m.S[X.S_PAE_SHADOW]):
            i = w.walk_shadow_pae(slot, va)
        else:
            i = w.walk_1d(m.sup, m.sleaf, slot, root, va, "shadow")
        e.found = i >= 0
        if e.found:
            frame = int(m.sleaf[i * STRIDE + 1]) >> 1
            e.final = f"gVA 0x{va:x} -> hPA 0x{(frame << 12) | (va & 4095):x}"
    else:
        if mode == "agile":
            if not (int(m.slots[slot, X.SL_AGILE_NESTED]) or int(m.slots[slot, X.SL_SROOT]) >= 0):
                e.final = "no shadow table for this process yet (built at its next CR3 load)"
                return e
            i, guest_leaf = w.walk_agile(slot, va)
            if i >= 0 and not guest_leaf:
                e.found = True
                frame = int(m.sleaf[i * STRIDE + 1]) >> 1
                e.final = (f"gVA 0x{va:x} -> hPA 0x{(frame << 12) | (va & 4095):x} (a "
                           "wholly shadowed path)")
                return e
        else:
            i = w.walk_2d(slot, va)
        e.found = i >= 0
        if e.found and not e.final:
            g = int(m.gleaf[i * STRIDE + 1]) >> 2
            h = w.hfn_of(g)
            e.final = (f"gVA 0x{va:x} -> gPA 0x{(g << 12) | (va & 4095):x} -> hPA "
                       f"0x{(h << 12) | (va & 4095):x}")
    if not e.found:
        e.steps.append(Step("fault", purpose="entry not present",
                            result={"shadow": "VM exit: hidden fault (fill the shadow) or true "
                                              "fault (inject into the guest)",
                                    "agile": "in the shadowed part a VM exit (as shadow); in a "
                                             "nested part a guest page fault"}
                            .get(mode, "guest page fault")))
        e.final = e.final or "not mapped: the access would fault"
    return e


def explain(address: int, trace=None, config=None, pid: int | None = None,
            modes=("native", "shadow", "nested"), progress=None) -> Explanation:
    """Replay ``trace`` (default: a tiny example touching ``address``) under each mode and
    explain the walk of ``address`` with the walk caches as left by the replay and off."""
    from ..api import resolve_config

    cfg = resolve_config(config)
    va_bits = cfg.guest.va_bits
    address = int(address)
    if address < 0 or address >= (1 << va_bits):
        raise MemvirtError(f"address 0x{address:x} is outside the {va_bits}-bit guest virtual "
                           f"address space ({cfg.guest.levels}-level guest page tables)")
    notes: list[str] = []
    if trace is None:
        trace = example_trace(address, va_bits)
        source = "built-in example: touch 32 pages around the address, then the address"
    else:
        source = str(getattr(trace, "meta", {}).get("name", trace)) if not isinstance(
            trace, str) else trace
    touch_pid, last_pid, nrec = _last_pid_touching(trace, address >> 12)
    if pid is None:
        if touch_pid is None:
            notes.append(f"the trace never accesses page 0x{address >> 12:x}; explaining it "
                         f"in process {last_pid}, the last one to run")
        pid = touch_pid if touch_pid is not None else last_pid
    if pid is None:
        raise MemvirtError("the trace is empty")
    walks = []
    for mode in modes:
        if progress:
            progress(f"replaying under {mode} paging")
        m, _ = replay(trace, cfg, mode)
        slot = _slot_of(m, pid)
        c = _Caches(m.caches, True)
        key = (slot << 45) | (address >> 12)
        if mode == modes[0] and (c.peek(hwc.STLB, key) >= 0 or c.peek(hwc.DTLB, key) >= 0
                                 or c.peek(hwc.ITLB, key) >= 0):
            notes.append("the TLBs still hold this page at the end of the replay, so a real "
                         "access would not walk; shown is the walk of a TLB miss")
        for on in (True, False):
            walks.append(explain_machine(m, mode, address, slot, on))
    return Explanation(address=address, pid=pid, source=source, records=nrec,
                       guest_levels=cfg.guest.levels, ept_levels=cfg.host.ept_levels,
                       host_page=cfg.host.page_size, walks=walks, notes=notes)


# ----------------------------------------------------------------------------- output


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def print_explanation(ex: Explanation, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    con = console or Console()
    n, mlev = ex.guest_levels, ex.ept_levels
    host = {4096: "4 KiB", 2097152: "2 MiB", 1073741824: "1 GiB"}[ex.host_page]
    con.print(f"[bold]Address 0x{ex.address:x}[/] in process {ex.pid}, after replaying "
              f"{ex.source} ({ex.records:,} records)")
    con.print(f"guest page tables: {n} levels; EPT: {mlev} levels, {host} host pages")
    for note in ex.notes:
        con.print(f"[yellow]note:[/] {note}")
    titles = {"native": "Native walk: the guest table, gVA -> PA (1D)",
              "shadow": "Shadow walk: the VMM's shadow table, gVA -> hPA (1D)",
              "nested": "Nested walk: guest table and EPT, gVA -> gPA -> hPA (2D)",
              "agile": "Agile walk: the shadow table down to a switching entry, then the "
                       "guest table and EPT (1D, then 2D)"}
    for w in ex.walks:
        state = "walk caches as the replay left them" if w.caches else "all walk caches OFF"
        t = Table(title=f"[bold]{titles[w.mode]}[/] -- {state}", title_justify="left",
                  header_style="bold", show_lines=False)
        for col, just in (("#", "right"), ("table", "left"), ("level", "left"),
                          ("entry at", "left"), ("PTE cache", "left"), ("for", "left"),
                          ("gives", "left")):
            t.add_column(col, justify=just)
        for s in w.steps:
            if s.kind == "ref":
                at = f"hPA 0x{s.paddr:x}" if w.mode != "native" else f"PA 0x{s.paddr:x}"
                if s.gpa is not None:
                    at = f"gPA 0x{s.gpa:x} = {at}"
                style = {"guest": "green", "shadow": "blue", "EPT": "dark_orange"}.get(s.table)
                t.add_row(str(s.ref_no), s.table, level_name(s.level), at, s.cache,
                          s.purpose, s.result, style=style)
            else:
                label = {"psc": "PSC hit", "ntlb": "nested TLB", "npsc": "nested PSC",
                         "fault": "FAULT"}[s.kind]
                t.add_row("", label, level_name(s.level) if s.level else "", "", "",
                          s.purpose, s.result, style="italic")
        if w.mode == "agile":
            shadow_refs = sum(1 for s in w.steps if s.kind == "ref" and s.table == "shadow")
            tail = (f"{_plural(w.refs, 'reference')} ({shadow_refs} into the shadow table, "
                    f"{w.refs - w.nested_refs - shadow_refs} into the guest table, "
                    f"{w.nested_refs} into the EPT)")
        elif w.mode == "nested":
            tail = (f"{_plural(w.refs, 'reference')} ({w.nested_refs} into the EPT, "
                    f"{w.refs - w.nested_refs} into the guest table)")
        else:
            tail = _plural(w.refs, "reference")
        t.caption = (f"{tail}; references served by L1/L2/L3/DRAM "
                     f"{w.refs_at('L1')}/{w.refs_at('L2')}/{w.refs_at('L3')}/{w.refs_at('DRAM')}; "
                     f"{w.cycles:.0f} cycles; {w.final}")
        t.caption_justify = "left"
        con.print(t)
        con.print()
    off = {w.mode: w.refs for w in ex.walks if not w.caches}
    if off:
        formula = f"(n+1)(m+1)-1 = ({n}+1)({mlev}+1)-1 = {(n + 1) * (mlev + 1) - 1}"
        skip = {4096: 0, 2097152: 1, 1073741824: 2}[ex.host_page]  # EPT levels not walked
        if skip:
            formula = (f"(n+1)(m-{skip})+n with {host} host pages = "
                       f"{(n + 1) * (mlev - skip) + n}")
        con.print(f"Without caches: native {off.get('native', '-')} and shadow "
                  f"{off.get('shadow', '-')} references (one per guest level), nested "
                  f"{off.get('nested', '-')}: every guest table pointer is a gPA that needs "
                  f"its own EPT walk, {formula}.")
        if "agile" in off:
            con.print(f"Agile, without caches: {off['agile']} references: n + (p+1)(m-L) for "
                      f"a switch to the guest table of level p (p = 0: the leaf page table) "
                      f"(n = {n}, m = {mlev}, L = {skip}), the nested walk's count for a wholly "
                      f"nested address space, n for a wholly shadowed path.")


__all__ = ["Explanation", "Step", "WalkExplanation", "example_trace", "explain",
           "explain_machine", "print_explanation", "replay"]
