"""Layout of the machine state shared by the compiled kernels.

The state is one ``MachineState`` named tuple of numpy arrays (numba passes it to every
kernel as one argument; ``st.guest_leaf`` compiles exactly like a positional index, and says
what it is).  Its fields:

- ``scalars``: machine-wide scalars, indexed by the ``S_*`` names below;
  ``counters``: event counters, indexed by the names in ``counters.py``
- ``cache_*``: every set-associative structure (TLBs, paging-structure caches, nested TLB,
  PTE cache) in flat arrays, layout in ``hw/cache.py``
- ``guest_upper``/``guest_leaf``: guest page tables; ``shadow_upper``/``shadow_leaf``:
  shadow tables; ``ept_upper``: the EPT's levels above the host page's (its leaves are
  ``p2m``: per 4 KiB frame, or per 2 MiB with 2 MiB and 1 GiB host pages, ``vmm/p2m.py``)
  -- all hash-stored radix tables, layout in ``guest/pagetable.py``
- ``frame_refcount``/``guest_free``: guest frame reference counts and free stack;
  ``host_free``: free stack of host frames used for shadow and EPT pages
- ``spaces[slot, SL_*]``: per-process (address space) state
- ``oos_pages``: keys of out-of-sync leaf shadow pages
- ``limits``: per-table fill limits (``LIM_*``); the driver stops and grows tables beyond them
- ``scratch``: scratch rows for table traversals (``guest.pagetable.collect``)

Nothing outside this definition indexes the state by position (a test checks it).
"""

from __future__ import annotations

from collections import namedtuple

MachineState = namedtuple("MachineState", [
    "scalars", "counters",
    "cache_tag", "cache_stamp", "cache_val", "cache_geom", "cache_last", "cache_clock",
    "guest_upper", "guest_leaf", "shadow_upper", "shadow_leaf", "ept_upper",
    "frame_refcount", "p2m", "guest_free", "host_free", "spaces", "oos_pages", "limits",
    "scratch",
])

MODE_NATIVE = 0
MODE_SHADOW = 1
MODE_NESTED = 2
MODE_AGILE = 3  # agile paging (vmm/agile.py): shadowed upper levels, nested subtrees
MODES = {"native": MODE_NATIVE, "shadow": MODE_SHADOW, "nested": MODE_NESTED,
         "agile": MODE_AGILE}
MODE_NAMES = {v: k for k, v in MODES.items()}

# S: scalar state
S_MODE = 0
S_LEVELS = 1
S_BITS = 2  # index bits per guest level (10 for the 2-level 32-bit guest, else 9)
S_EPT_LEVELS = 3
S_HOST_LEAF = 4  # EPT leaf level: 0 for 4 KiB host pages, 1 for 2 MiB, 2 for 1 GiB
S_CUR = 5  # running address space (slot), -1 none
# 6: unused
S_GFREE_TOP = 7
S_NEXT_HFN = 8
S_HFREE_TOP = 9
S_PCID = 10
S_VPID = 11
S_OOS = 12
S_OOS_MAX = 13
S_OOS_N = 14
S_CEIL = 15
S_EPT_ROOT = 16
S_GUP_USED = 17
S_GLEAF_USED = 18
S_SUP_USED = 19
S_SLEAF_USED = 20
S_EUP_USED = 21
S_NEED = 22  # entries/frames the next record needs (when the driver must grow)
S_ERROR = 23
S_VA_PAGES = 24  # number of 4 KiB pages in the guest virtual space
S_SH_PREFETCH = 25  # shadow entries a hidden fault fills ahead (0: off)
S_WALK_L1D = 26  # walk references look up the L1D first (1) or start at the L2 (0)
S_DATA_CACHES = 27  # program data accesses go through the caches (1) or not (0)
S_ENTRY_BYTES = 28  # bytes per guest page-table entry: 4 (32-bit non-PAE) or 8
S_HIGHPTE = 29  # page-table pages in highmem: kmap_atomic per page-table page the kernel works on
S_PAE_SHADOW = 30  # a 2-level guest shadowed with PAE-format tables (Xen "2-on-3")
S_VMM_CODE = 31  # VMM code pages / data pages / cache lines touched per VM exit
S_VMM_DATA = 32
S_VMM_LINES = 33
S_GUEST_FRAMES = 34  # guest physical frames (guest.memory_mib)
S_HOST_BASE = 35  # first host frame of the guest's backing (boot population: hfn = base + gfn)
S_AGILE_WRITES = 36  # agile: a shadowed page-table page moves to nested after more writes (-1 never)
S_AGILE_START_NESTED = 37  # agile: new address spaces start wholly nested (1) or shadowed (0)
S_AGILE_MOVE_BACK = 38  # agile: the periodic scan moves clean nested subtrees back (1) or not
NSCALARS = 48

# slots: per address space
SL_ALIVE = 0
SL_ROOT_GFN = 1
SL_ROOT_HFN = 2
SL_SROOT = 3  # shadow root hfn, -1 none
SL_BRK = 4
SL_NUP = 5
SL_NLEAF = 6
SL_NSHADOW = 7
SL_INSTR = 8  # instructions of the process image so far (sync points, see engine.run_records)
SL_AGILE_NESTED = 9  # agile: the whole address space is walked nested (its root is not shadowed)
SL_AGILE_WRITES = 10  # agile: writes to its shadowed root page-table page since the last scan
SL_AGILE_DIRTY = 11  # agile, nested root: AGILE_DIRTY | AGILE_YOUNG flags (vmm/agile.py)
NSLOTCOLS = 12

# lim: table fill limits (used + tombstones) and frame capacity
LIM_GUP = 0
LIM_GLEAF = 1
LIM_SUP = 2
LIM_SLEAF = 3
LIM_EUP = 4
# 5: unused
LIM_HFREE = 6
LIM_SCR = 7
NLIMS = 8
SCR_SLACK = 8192  # scratch beyond the largest table: the traversal stack's widest level

# kernel status codes
ST_DONE = 0
ST_PERIOD = 1
ST_GROW = 2
ST_ERROR = 3

ERR_LOOP = 1  # a translation did not settle after handling its faults (internal error)
ERR_OOM = 2  # the guest has no free frame left (guest.memory_mib too small for the trace)

# Agile paging: a shadow upper entry whose aux word is AGILE_SWITCH is a switching entry (its
# value is the host frame of the guest page-table page below, walked nested); paging-structure
# caches mark such guest tables with AGILE_GUEST in their payload.  Nested subtrees and roots
# carry AGILE_DIRTY (written since the last scan) and AGILE_YOUNG (nested since the last scan);
# an address space that started nested carries AGILE_NEW until it is shadowed.
AGILE_SWITCH = 1
AGILE_GUEST = 1 << 52
AGILE_DIRTY = 1
AGILE_YOUNG = 2
AGILE_NEW = 4

VMM_SPACE = 4096  # TLB key space of the VMM's own translations (guest slots are 0..4095)
