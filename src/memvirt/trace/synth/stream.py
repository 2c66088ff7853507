"""stream: sequential sweeps over a few large arrays (STREAM copy/scale/add/triad).

Regime: the first sweep over each array demand-faults every page; after that there are no
faults, and TLB misses are steady but cheap (one per page per array, with sequential
walks whose upper levels and PTE cache lines are shared by neighbouring pages).  With a
short trace the first sweep's faults favour nested paging; later sweeps are close to a
tie, slightly favouring shadow paging.

Shape of the trace, per process: an ``MMAP`` per array (``footprint_mib / arrays`` MiB
each, one guard page apart from 0x1000_0000), then sweeps.  Sweep ``k`` runs STREAM
kernel ``k mod 4`` (copy ``c = a``, scale ``b = s*c``, add ``c = a + b``, triad
``a = b + s*c``; with other array counts, kernel ``k`` writes array ``k mod arrays`` and
reads the next one or two).  Each element group of ``stride`` bytes contributes one
access per array involved, in the kernel's order (loads then the store), so within a
sweep each array's addresses increase by exactly ``stride``.  With one array each access
is a MODIFY (read-modify-write).  The trace ends wherever ``records`` runs out.
"""

from __future__ import annotations

import numpy as np

from ..records import Kind
from . import register_generator
from ._common import (
    LOAD,
    MMAP_BASE,
    MODIFY,
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
    footprint_mib=192.0,
    arrays=3,
    stride=64,
    processes=1,
    slice_records=200_000,
    ipr=3.5,
    seed=1,
    va_bits=31,
)

PARAMS_DOC = {
    **common(DEFAULTS, "records", "footprint_mib"),
    "arrays": doc("number of arrays (footprint split evenly)", DEFAULTS["arrays"]),
    "stride": doc("bytes between successive accesses to one array (64: one per cache "
                  "line; a multiple of 8 dividing 4096)", DEFAULTS["stride"]),
    **common(DEFAULTS, "processes", "slice_records", "ipr", "seed", "va_bits"),
}

_KERNELS_3 = [  # (sources, destination) for copy, scale, add, triad on arrays a, b, c
    ((0,), 2),
    ((2,), 1),
    ((0, 1), 2),
    ((1, 2), 0),
]


def _kernel(k: int, arrays: int) -> tuple[tuple[int, ...], int]:
    if arrays == 3:
        return _KERNELS_3[k % 4]
    if arrays == 1:
        return (), 0
    dst = k % arrays
    srcs = tuple((dst + i) % arrays for i in range(1, min(2, arrays - 1) + 1))
    return srcs, dst


def sweep_kernels(arrays: int) -> list[tuple[tuple[int, ...], int]]:
    """The (sources, destination) of sweeps 0, 1, 2, ... (the pattern repeats)."""
    n = 4 if arrays == 3 else max(arrays, 1)
    return [_kernel(k, arrays) for k in range(n)]


def _process(pid: int, records: int, arrays: int, array_bytes: int, stride: int) -> Builder:
    b = Builder()
    gap = array_bytes + PAGE  # a guard page between arrays
    bases = np.array([MMAP_BASE + i * gap for i in range(arrays)], np.uint64)
    for i in range(arrays):
        b.event(Kind.MMAP, pid, int(bases[i]), array_bytes)
    lines = array_bytes // stride
    step = np.arange(lines, dtype=np.uint64) * np.uint64(stride)
    remaining = max(records - arrays, 0)
    kernels = sweep_kernels(arrays)
    cache: dict[int, tuple[np.ndarray, np.ndarray | int]] = {}
    k = 0
    while remaining > 0:
        ki = k % len(kernels)
        if ki not in cache:
            srcs, dst = kernels[ki]
            if not srcs:
                cache[ki] = (step + bases[dst], MODIFY)
            else:
                order = np.array(list(srcs) + [dst], np.int64)
                addr = (step[:, None] + bases[order][None, :]).reshape(-1)
                kinds = np.tile(np.array([LOAD] * len(srcs) + [STORE], np.uint8), lines)
                cache[ki] = (addr, kinds)
        addr, kinds = cache[ki]
        take = min(remaining, len(addr))
        b.access(addr[:take], pid, kind=kinds if isinstance(kinds, int) else kinds[:take])
        remaining -= take
        k += 1
    return b


def stream(*, records=DEFAULTS["records"], footprint_mib=DEFAULTS["footprint_mib"],
           arrays=DEFAULTS["arrays"], stride=DEFAULTS["stride"],
           processes=DEFAULTS["processes"], slice_records=DEFAULTS["slice_records"],
           ipr=DEFAULTS["ipr"], seed=DEFAULTS["seed"], va_bits=DEFAULTS["va_bits"]):
    """Sequential sweeps over large arrays (STREAM kernels)."""
    c = ParamCheck("stream")
    c.common(records=records, footprint_mib=footprint_mib, processes=processes,
             slice_records=slice_records, ipr=ipr, seed=seed, va_bits=va_bits)
    c.range("arrays", arrays, 1, 64)
    c.range("stride", stride, 8, PAGE)
    if stride % 8 or PAGE % stride:
        raise c.error("stride", f"must be a multiple of 8 dividing 4096, got {stride}")
    array_pages = max(1, pages_of(footprint_mib) // (arrays * processes))
    array_bytes = array_pages * PAGE
    c.fits(MMAP_BASE + arrays * (array_bytes + PAGE), va_bits, "footprint_mib")
    gens = rngs(seed, 1)
    pids = list(range(1, processes + 1))
    parts = [_process(pids[i], n, arrays, array_bytes, stride)
             for i, n in enumerate(split(records, processes))]
    return interleave(parts, pids, slice_records).build(gens[0], ipr, 0.0)


register_generator("stream", stream, PARAMS_DOC)
