"""Layout of the machine state shared by the compiled kernels.

The state is a tuple of numpy arrays (numba passes it to every kernel as one
argument and each kernel unpacks what it needs):

    (S, C, ctag, cstamp, cval, cgeom, clast, cclock,
     gup, gleaf, sup, sleaf, eup, refcnt, p2m, gfree, hfree, slots, oos, lim, scr)

- ``S``: scalars (indices below), ``C``: event counters (``counters.py``)
- ``c*``: the set-associative structures (``hw/cache.py``)
- ``gup/gleaf``: guest page tables, ``sup/sleaf``: shadow tables, ``eup``: EPT upper
  levels (its leaves are ``p2m``) -- all in ``guest/pagetable.py`` layout
- ``refcnt``/``gfree``: guest frame reference counts and free stack; ``hfree``: free
  stack of host frames used for shadow pages
- ``slots[slot, SL_*]``: per-process (address space) state
- ``oos``: keys of out-of-sync leaf shadow pages
- ``lim``: per-table fill limits; the driver stops and grows tables beyond them
- ``scr``: scratch rows for table traversals (``guest.pagetable.collect``)
"""

from __future__ import annotations

MODE_NATIVE = 0
MODE_SHADOW = 1
MODE_NESTED = 2
MODES = {"native": MODE_NATIVE, "shadow": MODE_SHADOW, "nested": MODE_NESTED}
MODE_NAMES = {v: k for k, v in MODES.items()}

# S: scalar state
S_MODE = 0
S_LEVELS = 1
S_BITS = 2  # index bits per guest level (10 for the 2-level 32-bit guest, else 9)
S_EPT_LEVELS = 3
S_HOST_LEAF = 4  # EPT leaf level: 0 for 4 KiB host pages, 1 for 2 MiB
S_CUR = 5  # running address space (slot), -1 none
S_NEXT_GFN = 6
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
NSCALARS = 32

# slots: per address space
SL_ALIVE = 0
SL_ROOT_GFN = 1
SL_ROOT_HFN = 2
SL_SROOT = 3  # shadow root hfn, -1 none
SL_BRK = 4
SL_NUP = 5
SL_NLEAF = 6
SL_NSHADOW = 7
NSLOTCOLS = 8

# lim: table fill limits (used + tombstones) and frame capacity
LIM_GUP = 0
LIM_GLEAF = 1
LIM_SUP = 2
LIM_SLEAF = 3
LIM_EUP = 4
LIM_GFN = 5
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
