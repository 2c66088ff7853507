"""The guest's physical frame allocator (LIFO free list, like Linux's per-CPU hot pages)."""

from __future__ import annotations

from numba import njit

from .. import counters as K
from .. import state as X
from ..vmm.p2m import back_frame


@njit(cache=True, _nrt=False)
def alloc_gfn(st):
    """A free guest frame with reference count 1; returns (gfn, hfn) (hfn -1 when native)."""
    S, C, refcnt, gfree = st.scalars, st.counters, st.frame_refcount, st.guest_free
    if S[X.S_GFREE_TOP] > 0:
        S[X.S_GFREE_TOP] -= 1
        g = gfree[S[X.S_GFREE_TOP]]
    else:
        g = S[X.S_NEXT_GFN]
        S[X.S_NEXT_GFN] += 1
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
