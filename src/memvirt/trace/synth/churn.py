"""churn: large blocks allocated with mmap, filled, and freed with munmap, over and over.

Regime: a malloc/free loop whose blocks are big enough that the allocator returns them to
the OS (glibc serves blocks of 128 KiB and more with mmap and frees them with munmap).
Every cycle re-faults every page of the block, and every munmap clears the block's PTEs
and flushes the TLB: guest page faults and page-table writes dominate, so nested paging
wins by a wide margin.

Shape of the trace, per process: cycles of ``MMAP`` (``block_mib`` at one of ``slots``
fixed addresses from 0x1000_0000, taken in turn, so each address is unmapped and mapped
again every ``slots`` cycles, as an allocator reusing the same hole would), then
``touches`` accesses per page of the block in page order (the first a STORE: the fault),
then ``MUNMAP`` of the block.  The last cycle touches only as many pages as ``records``
leaves room for.
"""

from __future__ import annotations

import numpy as np

from ..records import Kind
from . import register_generator
from ._common import (
    LOAD,
    MMAP_BASE,
    PAGE,
    STORE,
    Builder,
    ParamCheck,
    common,
    doc,
    interleave,
    offsets,
    pages_of,
    rngs,
    split,
    store_pattern,
)

DEFAULTS = dict(
    records=5_000_000,
    block_mib=4.0,
    touches=16,
    slots=2,
    processes=1,
    slice_records=200_000,
    ipr=3.5,
    store_frac=0.5,
    seed=1,
    va_bits=31,
)

PARAMS_DOC = {
    "records": doc("approximate total number of records", DEFAULTS["records"]),
    "block_mib": doc("size of each mmapped block, in MiB", DEFAULTS["block_mib"]),
    "touches": doc("accesses per page of a block while it is mapped (the first is the "
                   "faulting store)", DEFAULTS["touches"]),
    "slots": doc("distinct block addresses used in turn (each is re-mmapped every "
                 "'slots' cycles)", DEFAULTS["slots"]),
    **common(DEFAULTS, "processes", "slice_records", "ipr", "store_frac", "seed",
             "va_bits"),
}


def churn_cycles(rng, b: Builder, pid: int, records: int, base: int, block_pages: int,
                 touches: int, slots: int, store_frac: float, first_slot: int = 0) -> int:
    """Append mmap/touch/munmap cycles totalling about ``records`` records to ``b``; blocks
    go to ``slots`` addresses from ``base``, one guard page apart, starting with slot
    ``first_slot``.  Returns the slot the next cycle would use."""
    per_cycle = block_pages * touches + 2
    full, rest = divmod(max(records, 0), per_cycle)
    last = max(rest - 2, 0 if full else 1)  # accesses of a final, partly touched block
    cycles = full + (1 if last else 0)
    if not cycles:
        return first_slot
    block = block_pages * PAGE
    n = block_pages * touches
    slot_base = (np.uint64(base) + ((first_slot + np.arange(cycles, dtype=np.uint64))
                                    % np.uint64(slots)) * np.uint64(block + PAGE))
    # Accesses in page order: page p of the block gets accesses p*touches .. +touches-1.
    page_off = np.repeat(np.arange(block_pages, dtype=np.uint64) << np.uint64(12), touches)
    addr = offsets(rng, cycles * n).reshape(cycles, n)
    addr += page_off
    addr += slot_base[:, None]
    kind = store_pattern(rng, cycles * n, store_frac).reshape(cycles, n)
    kind += np.uint8(LOAD)
    kind[:, ::touches] = STORE  # the first access to each page is the faulting store
    for i in range(cycles):
        start = int(slot_base[i])
        m = last if i == full else n
        b.event(Kind.MMAP, pid, start, block)
        b.access(addr[i, :m], pid, kind=kind[i, :m])
        b.event(Kind.MUNMAP, pid, start, block)
    return int((first_slot + cycles) % slots)


def churn(*, records=DEFAULTS["records"], block_mib=DEFAULTS["block_mib"],
          touches=DEFAULTS["touches"], slots=DEFAULTS["slots"],
          processes=DEFAULTS["processes"], slice_records=DEFAULTS["slice_records"],
          ipr=DEFAULTS["ipr"], store_frac=DEFAULTS["store_frac"], seed=DEFAULTS["seed"],
          va_bits=DEFAULTS["va_bits"]):
    """mmap / touch every page / munmap, repeated (guest-page-fault bound)."""
    c = ParamCheck("churn")
    c.common(records=records, processes=processes, slice_records=slice_records, ipr=ipr,
             store_frac=store_frac, seed=seed, va_bits=va_bits)
    c.range("block_mib", block_mib, 1 / 256, 1 << 16)
    c.range("touches", touches, 1, 1 << 16)
    c.range("slots", slots, 1, 1024)
    block_pages = pages_of(block_mib)
    c.fits(MMAP_BASE + slots * (block_pages + 1) * PAGE, va_bits, "block_mib")
    gens = rngs(seed, processes + 1)
    pids = list(range(1, processes + 1))
    parts = []
    for i, n in enumerate(split(records, processes)):
        b = Builder()
        churn_cycles(gens[i], b, pids[i], n, MMAP_BASE, block_pages, touches, slots,
                     store_frac)
        parts.append(b)
    return interleave(parts, pids, slice_records).build(gens[-1], ipr, store_frac)


register_generator("churn", churn, PARAMS_DOC)
