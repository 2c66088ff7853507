"""The simulator's memory: what its state costs per distinct page touched, an estimate before
a run, and a clear refusal when the estimate is above the budget.

The state (``engine.Machine``) is a set of numpy arrays.  Some are fixed by the
configuration (the TLBs and caches; per guest frame a reference count, a free-stack slot and
a p2m entry, and at boot the EPT's upper levels), the rest grows with the distinct (process,
page) pairs the trace touches: hash-stored guest page tables (and shadow tables under shadow
paging), the scratch rows their traversals use, the host frames of shadow/EPT pages.  The
hash tables double when half full and the old table lives until the new one is filled, so
the peak is a sawtooth of the footprint; ``BYTES_PER_PAGE`` is the top of that sawtooth.

``memvirt bench --memory`` measures the constants below (``cli/bench.py``): for each mode it
feeds a machine with chunks of records that touch new pages, dense (consecutive pages) and
scattered (random pages of a region 64 times the footprint: 8 per page-table page, in random
order), up to 2^21 pages, and records after every chunk the peak bytes of numpy arrays beyond
those of the empty machine (``tracemalloc``: the live arrays plus those being replaced).  The constant is the largest peak per page at 2^17 pages or more, over both
layouts, rounded up to 8 bytes.

``memvirt run`` (``api.simulate``) checks a trace whose footprint is known (memvirt Parquet
files carry ``footprint_pages`` in their metadata) before the first record: the estimate
(fixed part + footprint x bytes per page + the reader's chunks + the process itself) must
not exceed ``run.memory_budget_fraction`` of the memory available (physical memory, or less
under a cgroup limit or an address-space rlimit); 0 turns the check off.  The synthetic
generators that build their trace in memory are checked the same way
(``SYNTH_BYTES_PER_RECORD`` per record).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from .config import RunConfig
from .errors import MemvirtError

# --------------------------------------------------------------------------------------------
# measured constants (memvirt bench --memory, 2026-12-02, 2^21 pages in steps of 2^14; see
# the module docstring).  Worst peak bytes per page at 2^17 pages or more, dense / scattered:
# native 259.7 / 379.6, shadow 387.7 / 569.5, nested 259.7 / 379.6, selective 279.8 / 566.5.

#: peak state bytes per distinct (process, 4 KiB page) touched, by mode: the larger of the
#: two layouts, rounded up to 8 bytes.  Nested costs what native does (its EPT is built for
#: every guest frame at boot: a fixed cost); selective (measured: the same pages under shadow,
#: nested, shadow again) is given shadow's figure, as a selective run may stay in shadow.
BYTES_PER_PAGE = {"native": 384, "shadow": 576, "nested": 384, "selective": 576}
#: state of an empty machine besides its caches and guest frames (tables at their initial
#: size, per-process slots, scratch rows): measured 2,754,232
MACHINE_BASE_BYTES = 2_760_000
#: the interpreter with numpy, numba, pyarrow and the compiled kernels loaded, after a small
#: run in every mode (resident; measured 202,379,264)
PROCESS_BASE_BYTES = 200 << 20
#: peak bytes per record while an in-memory synthetic generator builds its trace (measured
#: at 2x10^6 records: 41.1 compute ... 49.1 chase and hot, 45.1 uniform)
SYNTH_BYTES_PER_RECORD = 50

# derived, not measured: what Machine.__init__ allocates
BYTES_PER_CACHE_ENTRY = 24  # tag, LRU stamp, value (int64 each)
TABLE_ENTRY_BYTES = 32  # a hash-table slot: key, value, two more int64 (guest.pagetable)
RECORD_BYTES = 41  # kind 1, addr 8, size 8, pid 8, icount 4, repeat 4, lines 8 (records.py)
CHUNK_OVERHEAD_PER_RECORD = 2 * RECORD_BYTES + 16  # a chunk being read, the one before it,
#                                                    and the engine's slot/arg buffers

DEFAULT_FRACTION = RunConfig.model_fields["memory_budget_fraction"].default
GIB = 1 << 30


class MemoryBudgetError(MemvirtError):
    """A run (or a synthetic trace) would need more memory than the budget allows."""


class SimulatorMemoryError(MemvirtError):
    """The memory ran out during a run (a ``MemoryError`` growing the state, reading a
    chunk...): ``record`` is the records run so far, ``pages`` the distinct pages mapped."""

    def __init__(self, message: str, record: int | None = None, pages: int | None = None):
        super().__init__(message)
        self.record = record
        self.pages = pages


# --------------------------------------------------------------------------------------------
# the memory available


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _cgroup_limit() -> tuple[int, str] | None:
    """The tightest cgroup memory limit on this process's cgroup path (v2 ``memory.max``,
    or v1 ``memory.limit_in_bytes``), with the file it came from."""
    root = Path("/sys/fs/cgroup")
    candidates = [root / "memory.max", root / "memory" / "memory.limit_in_bytes"]
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            rel = rel.strip("/")
            if not rel:
                continue
            if controllers == "":  # v2: the unified hierarchy
                p = root / rel
                while p != root and root in p.parents:
                    candidates.append(p / "memory.max")
                    p = p.parent
            elif "memory" in controllers.split(","):
                candidates.append(root / "memory" / rel / "memory.limit_in_bytes")
    except (OSError, ValueError):
        pass
    best = None
    for c in candidates:
        v = _read_int(c)
        if v is not None and v < (1 << 60) and (best is None or v < best[0]):
            best = (v, f"the cgroup limit ({c})")
    return best


def _mapped_bytes() -> int:
    """The process's virtual size (what RLIMIT_AS counts)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def memory_limit() -> tuple[int, str]:
    """The memory this process may use, in bytes, and what sets it: the smallest of physical
    memory (``os.sysconf``), the cgroup limit (``/sys/fs/cgroup/.../memory.max``) and the
    address-space rlimit (``ulimit -v``) less what the process maps already."""
    found: list[tuple[int, str]] = []
    try:
        found.append((os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"),
                      "physical memory"))
    except (ValueError, OSError, AttributeError):
        pass
    cg = _cgroup_limit()
    if cg is not None:
        found.append(cg)
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ValueError, OSError):
        soft = resource.RLIM_INFINITY
    if soft != resource.RLIM_INFINITY:
        # what is left of it, plus the process's own base (the estimates count it)
        used = _mapped_bytes()
        found.append((max(0, soft - used) + PROCESS_BASE_BYTES,
                      f"the address-space limit (ulimit -v: {fmt_bytes(soft)}, "
                      f"{fmt_bytes(used)} mapped already)"))
    if not found:
        return 1 << 62, "unknown"
    return min(found, key=lambda x: x[0])


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{int(n)} bytes"


# --------------------------------------------------------------------------------------------
# estimates


def _pow2_table_bytes(capacity: int) -> int:
    """Bytes of ``guest.pagetable.new_table(capacity)``."""
    return (1 << max(4, int(capacity - 1).bit_length())) * TABLE_ENTRY_BYTES


def cache_bytes(cfg) -> int:
    """The TLBs, paging-structure caches and caches as configured."""
    hw, g, h = cfg.hw, cfg.guest, cfg.host
    entries = (hw.itlb.entries + hw.dtlb.entries + hw.stlb.entries + hw.nested_tlb.entries
               + hw.psc.entries * (g.levels - 1) + hw.nested_psc.entries * (h.ept_levels - 1)
               + hw.l1d.entries + hw.l2.entries + hw.l3.entries)
    return BYTES_PER_CACHE_ENTRY * entries


def frame_bytes(cfg) -> int:
    """Per guest frame: a reference count, a free-stack slot, a p2m entry (one per 2 MiB
    with 2 MiB or 1 GiB host pages); with boot population, the EPT's upper levels."""
    frames = cfg.guest.frames
    p2m = frames if cfg.host.page_size == 4096 else (frames >> 9) + 1
    total = 4 * frames + 8 * p2m + 8 * (frames - min(4096, frames // 4))
    if cfg.host.populate == "boot":
        total += _pow2_table_bytes(4 * (frames // 512 + 64))
    return total


def estimate_bytes(cfg, mode: str, pages: int, chunk_records: int = 1 << 20) -> dict:
    """The estimated peak memory of simulating a trace touching ``pages`` distinct (process,
    page) pairs under ``mode``: a dict of the parts and their ``total``."""
    parts = {
        "process": PROCESS_BASE_BYTES,
        "fixed state": MACHINE_BASE_BYTES + cache_bytes(cfg) + frame_bytes(cfg),
        "per-page state": BYTES_PER_PAGE.get(mode, max(BYTES_PER_PAGE.values())) * int(pages),
        "trace chunks": CHUNK_OVERHEAD_PER_RECORD * int(chunk_records),
    }
    parts["total"] = sum(parts.values())
    return parts


def footprint_pages(src) -> int | None:
    """The trace's footprint in distinct (process, page) pairs when its metadata says so
    (memvirt Parquet files: ``footprint_pages``), else None."""
    meta = getattr(src, "meta", None) or {}
    n = meta.get("footprint_pages")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        return None
    return n


def budget_bytes(fraction: float) -> tuple[int, int, str]:
    """(budget, memory available, what limits it) for ``fraction`` of the memory."""
    avail, what = memory_limit()
    return int(fraction * avail), avail, what


def check_run(src, cfg, mode: str, where: str, chunk_records: int = 1 << 20) -> dict | None:
    """Refuse (``MemoryBudgetError``) a run whose estimated peak memory is above
    ``run.memory_budget_fraction`` of the memory available; returns the estimate (None when
    the footprint is unknown or the check is off)."""
    fraction = cfg.run.memory_budget_fraction
    pages = footprint_pages(src)
    if pages is None or fraction <= 0:
        return None
    records = (getattr(src, "meta", None) or {}).get("records")
    if isinstance(records, int) and not isinstance(records, bool) and records > 0:
        chunk_records = min(chunk_records, records)  # a short trace: one short chunk
    est = estimate_bytes(cfg, mode, pages, chunk_records)
    budget, avail, what = budget_bytes(fraction)
    if est["total"] > budget:
        per = BYTES_PER_PAGE.get(mode, max(BYTES_PER_PAGE.values()))
        raise MemoryBudgetError(
            f"{where}: simulating this trace in {mode} mode needs about "
            f"{fmt_bytes(est['total'])} ({pages:,} distinct pages x {per} bytes of simulator "
            f"state per page = {fmt_bytes(est['per-page state'])}, plus "
            f"{fmt_bytes(est['total'] - est['per-page state'])} for the guest's "
            f"{cfg.guest.memory_mib:,} MiB, caches, trace chunks and the process), above the "
            f"memory budget of {fmt_bytes(budget)} ({fraction:g} of {fmt_bytes(avail)}, "
            f"{what}); run it on a machine with more memory, or raise the budget "
            f"(--memory-budget F or --set run.memory_budget_fraction=F; 0 turns the check off)")
    return est


def check_synth(name: str, records: int, fraction: float = DEFAULT_FRACTION) -> None:
    """Refuse an in-memory synthetic trace of ``records`` records whose generation would
    take more than ``fraction`` of the memory available."""
    if fraction <= 0:
        return
    need = SYNTH_BYTES_PER_RECORD * int(records) + PROCESS_BASE_BYTES
    budget, avail, what = budget_bytes(fraction)
    if need > budget:
        fits = max(0, (budget - PROCESS_BASE_BYTES) // max(1, SYNTH_BYTES_PER_RECORD))
        raise MemoryBudgetError(
            f"synth generator '{name}': records={records:,} builds the whole trace in memory "
            f"(about {fmt_bytes(need)}, {SYNTH_BYTES_PER_RECORD} bytes per record), above the "
            f"memory budget of {fmt_bytes(budget)} ({fraction:g} of {fmt_bytes(avail)}, "
            f"{what}); use at most about {fits:,} records, or the streaming generator 'spec' "
            f"(its trace is made chunk by chunk), or raise the budget (--memory-budget F or "
            f"--set run.memory_budget_fraction=F; 0 turns the check off)")
