"""The guest's physical frame allocator: a LIFO stack of free frames (like Linux's per-CPU hot
page lists), filled at the start with every frame of the guest's memory in the order of
``guest.frame_order``; freed frames are reused first.  The driver checks before each record
that enough frames are free (an empty stack is a clear error, not a crash)."""

from __future__ import annotations

from numba import njit

from .. import counters as K
from .. import state as X
from ..vmm.p2m import back_frame


@njit(cache=True, _nrt=False)
def alloc_gfn(st):
    """A free guest frame with reference count 1; returns (gfn, hfn) (hfn -1 when native)."""
    S, C, refcnt, gfree = st.scalars, st.counters, st.frame_refcount, st.guest_free
    S[X.S_GFREE_TOP] -= 1  # never empty here: the driver checked there is room
    g = gfree[S[X.S_GFREE_TOP]]
    refcnt[g] = 1
    C[K.GUEST_FRAMES] += 1
    h = -1
    if S[X.S_MODE] != X.MODE_NATIVE:
        h = back_frame(st, g)
    return g, h


@njit(cache=True, _nrt=False)
def put_frame(st, g):
    """Drop one reference to guest frame ``g``; a frame nobody maps returns to the free list."""
    S, refcnt, gfree = st.scalars, st.frame_refcount, st.guest_free
    if refcnt[g] <= 0:
        return
    refcnt[g] -= 1
    if refcnt[g] <= 0:
        refcnt[g] = 0
        gfree[S[X.S_GFREE_TOP]] = g
        S[X.S_GFREE_TOP] += 1
