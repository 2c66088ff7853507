"""chase: pointer chasing across a large virtual span -- the TLB-miss-bound regime (mcf).

Regime: after a warm-up that touches every page once, almost every node visit lands on a
random page, so the trace is dominated by TLB misses with long page walks and has no page
faults at all.  Shadow paging wins (its walks are one-dimensional); nested paging pays
the two-dimensional walk on each miss.

Shape of the trace, per process:

1. ``MMAP`` of the whole region (``span_mib``, at 0x1000_0000);
2. warm-up: one STORE per page of the footprint in address order (the program building
   its data structure), each carrying ``init_icount`` instructions: the only page faults;
3. the chase: a fixed random cyclic order of the ``footprint_mib`` pages (a linked list
   whose consecutive nodes sit on random pages).  Each node visit makes ``per_node``
   accesses to fields of one ``node_bytes``-byte node (the first usually misses the TLB,
   the others hit); one pass visits every page once, and successive passes visit the
   next node slot of each page, so the walk is a single cycle over all nodes.

When ``span_mib`` exceeds ``footprint_mib`` the touched pages are a random subset of the
span: the page tables (and so the walks' paging-structure and PTE cache misses) are those
of the whole span while the number of faults stays at ``footprint_mib * 256``.

Sizing: each warm-up fault costs shadow paging of the order of 10^4 cycles more than
nested paging, while each TLB miss costs nested paging only some tens of cycles more, so
the chase must make a thousand or more misses per footprint page for shadow paging to
win.  Hence the defaults: 5 M records over 8 MiB (2,048 pages, four times the reach of a
512-entry L2 TLB) scattered over 1 GiB, one access per node.  Large footprints (the real
mcf touches ~1.7 GiB) need traces of billions of records to leave the warm-up behind.
"""

from __future__ import annotations

import numpy as np

from ..records import Kind
from . import register_generator
from ._common import (
    MIB,
    MMAP_BASE,
    PAGE,
    STORE,
    Builder,
    ParamCheck,
    common,
    doc,
    interleave,
    pages_of,
    rngs,
    split,
)

DEFAULTS = dict(
    records=5_000_000,
    footprint_mib=8.0,
    span_mib=1024.0,
    node_bytes=64,
    per_node=1,
    init_icount=64,
    processes=1,
    slice_records=200_000,
    ipr=3.5,
    store_frac=0.05,
    seed=1,
    va_bits=31,
)

PARAMS_DOC = {
    **common(DEFAULTS, "records", "footprint_mib"),
    "span_mib": doc("virtual span in MiB over which the footprint's pages are scattered "
                    "(<= footprint_mib: dense)", DEFAULTS["span_mib"]),
    "node_bytes": doc("bytes per list node (a power of two, 8..4096)", DEFAULTS["node_bytes"]),
    "per_node": doc("accesses per node visit (fields read; node_bytes >= 8 * per_node)",
                    DEFAULTS["per_node"]),
    "init_icount": doc("instructions carried by each warm-up store (initialising one page)",
                       DEFAULTS["init_icount"]),
    **common(DEFAULTS, "processes", "slice_records", "ipr", "store_frac", "seed", "va_bits"),
}


class ChaseWalk:
    """The node visit order of a pointer chase over ``pages`` pages (a random subset of
    ``span_pages`` pages from ``base`` when the span is larger), continued across calls."""

    def __init__(self, rng: np.random.Generator, base: int, pages: int, span_pages: int,
                 node_bytes: int, per_node: int):
        if span_pages > pages:
            chosen = np.sort(rng.choice(span_pages, pages, replace=False)).astype(np.uint64)
        else:
            chosen = np.arange(pages, dtype=np.uint64)
        self.page_addr = np.uint64(base) + chosen * np.uint64(PAGE)  # ascending
        self.cyc_addr = self.page_addr[rng.permutation(pages)]  # the list order of pages
        self.slots = PAGE // node_bytes
        self.shift = np.uint32(node_bytes.bit_length() - 1)
        self.home = rng.integers(0, self.slots, pages, dtype=np.uint32)  # first node slot
        self.fields = np.arange(per_node, dtype=np.uint64) * np.uint64(8)
        self.per_pass = pages * per_node
        self.batch = max(1, (1 << 18) // self.per_pass)  # passes built per numpy step
        self.pos = 0  # accesses made so far

    def _passes(self, j: int, k: int) -> np.ndarray:
        """Accesses of passes j .. j+k-1: pass j visits slot (home + j) mod slots of every
        page, so the walk is one cycle over all nodes."""
        slot = self.home[None, :] + np.arange(j, j + k, dtype=np.uint32)[:, None]
        slot &= np.uint32(self.slots - 1)
        slot <<= self.shift
        node = self.cyc_addr + slot
        if len(self.fields) > 1:
            node = node[:, :, None] + self.fields
        return node.reshape(-1)

    def take(self, n: int) -> list[np.ndarray]:
        """The next ``n`` accesses, as a list of blocks."""
        out = []
        while n > 0:
            j, o = divmod(self.pos, self.per_pass)
            k = min(self.batch, -(-(o + n) // self.per_pass))
            a = self._passes(j, k)[o:o + n]
            out.append(a)
            n -= len(a)
            self.pos += len(a)
        return out


def _process(rng, pid: int, records: int, pages: int, span_pages: int, node_bytes: int,
             per_node: int, init_icount: int) -> Builder:
    b = Builder()
    b.event(Kind.MMAP, pid, MMAP_BASE, span_pages * PAGE)
    walk = ChaseWalk(rng, MMAP_BASE, pages, span_pages, node_bytes, per_node)
    b.access(walk.page_addr, pid, kind=STORE, icount=init_icount)
    for a in walk.take(max(records - pages - 1, 0)):
        b.access(a, pid)
    return b


def chase(*, records=DEFAULTS["records"], footprint_mib=DEFAULTS["footprint_mib"],
          span_mib=DEFAULTS["span_mib"], node_bytes=DEFAULTS["node_bytes"],
          per_node=DEFAULTS["per_node"], init_icount=DEFAULTS["init_icount"],
          processes=DEFAULTS["processes"], slice_records=DEFAULTS["slice_records"],
          ipr=DEFAULTS["ipr"], store_frac=DEFAULTS["store_frac"], seed=DEFAULTS["seed"],
          va_bits=DEFAULTS["va_bits"]):
    """Pointer chasing across a large virtual span (TLB-miss bound, no faults after warm-up)."""
    c = ParamCheck("chase")
    c.common(records=records, footprint_mib=footprint_mib, processes=processes,
             slice_records=slice_records, ipr=ipr, store_frac=store_frac, seed=seed,
             va_bits=va_bits)
    c.range("span_mib", span_mib, 0)
    c.range("node_bytes", node_bytes, 8, PAGE)
    if node_bytes & (node_bytes - 1):
        raise c.error("node_bytes", f"must be a power of two, got {node_bytes}")
    c.range("per_node", per_node, 1, node_bytes // 8)
    c.range("init_icount", init_icount, 0, 1 << 20)
    pages = max(1, pages_of(footprint_mib) // processes)
    span_pages = max(pages, int(span_mib * MIB) // PAGE)
    c.fits(MMAP_BASE + span_pages * PAGE, va_bits, "span_mib" if span_mib > footprint_mib
           else "footprint_mib")
    if records // processes <= pages + 1:
        raise c.error("records", f"({records}) leaves no room for the chase after the warm-up "
                      f"({pages + 1} records per process: one per footprint page); raise it "
                      "or lower footprint_mib")
    gens = rngs(seed, processes + 1)
    pids = list(range(1, processes + 1))
    parts = [
        _process(gens[i], pids[i], n, pages, span_pages, node_bytes, per_node, init_icount)
        for i, n in enumerate(split(records, processes))
    ]
    return interleave(parts, pids, slice_records).build(gens[-1], ipr, store_frac)


register_generator("chase", chase, PARAMS_DOC)
