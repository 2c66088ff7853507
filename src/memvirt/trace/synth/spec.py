"""spec: a SPEC CPU2006 stand-in of any length, streamed in chunks, shaped by target rates.

The selective-paging study measured whole SPEC CPU2006 runs (10^11-10^12 instructions) with
0.02-16 TLB misses and 0-0.015 guest page faults per 1,000 instructions.  This generator
makes traces of realistic length (10^9 and more instructions) whose rates fall in those
ranges by construction, without holding the trace in memory (the records are made chunk by
chunk by a compiled kernel, so a 10^10-instruction trace costs a few MB of RAM):

- **start-up**: the process maps its heap (``MMAP``) and touches every page of its hot set
  and of its footprint once, in order (the first-touch faults of a real program's start);
- **hot accesses** go to a small hot set (``hot_pages``, inside the L1 TLB's reach), as runs
  of ``hot_run`` accesses to one page: one record with a repeat count (as a collapsed
  capture would write it);
- **cold accesses** (``cold_pki`` per 1,000 instructions) go to a random 8-byte word of the
  footprint (``pattern = random``; with a footprint far beyond the TLB's reach each is about
  one TLB miss) or sweep it in order, ``stride`` bytes apart (``sequential``: one TLB miss
  per 4096 / stride cold accesses);
- **phases** (``phase_instructions`` > 0): the steady state alternates between the rates
  (``cold_pki``, ``churn_pki``) and (``cold_pki_b``, ``churn_pki_b``) every
  ``phase_instructions`` instructions: a program whose regime changes;
- **churn** (``churn_pki`` first touches per 1,000 instructions): the process touches fresh
  pages of an anonymous block; when a block (``churn_block_pages``) is used up it maps the
  next one, and beyond ``churn_blocks`` live blocks it unmaps the oldest (as an allocator
  that returns large blocks to the OS).  Each first touch is a demand fault; each unmap
  clears PTEs.  This is the steady fault rate of gcc-like programs.

Instructions ride on the data records (``ipr`` per access).  Rates: cold accesses per
1,000 instructions are exact in expectation; TLB misses follow from them (a few more from
churn and start-up); faults per 1,000 instructions = (start-up pages + churned pages) /
instructions x 1,000.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..records import Kind, Trace
from . import register_generator
from ._common import MMAP_BASE, PAGE, ParamCheck, doc, pages_of

DEFAULTS = dict(
    instructions=1_000_000_000,
    footprint_mib=64.0,
    pattern="random",
    stride=64,
    cold_pki=1.0,
    churn_pki=0.0,
    phase_instructions=0,
    cold_pki_b=0.0,
    churn_pki_b=0.0,
    churn_block_pages=256,
    churn_blocks=8,
    hot_pages=16,
    hot_run=16,
    ipr=3.0,
    store_frac=0.3,
    seed=1,
    va_bits=31,
)

PARAMS_DOC = {
    "instructions": doc("instructions in the trace (start-up included)",
                        DEFAULTS["instructions"]),
    "footprint_mib": doc("memory the cold accesses range over, in MiB (touched once at "
                         "start-up)", DEFAULTS["footprint_mib"]),
    "pattern": doc("cold accesses: 'random' words or 'sequential' sweeps", DEFAULTS["pattern"]),
    "stride": doc("bytes between consecutive sequential cold accesses (a power of two, 8 to "
                  "4096; 4096 / stride accesses per page)", DEFAULTS["stride"]),
    "cold_pki": doc("cold accesses per 1,000 instructions (random: about the TLB misses)",
                    DEFAULTS["cold_pki"]),
    "churn_pki": doc("fresh pages first touched per 1,000 instructions in steady state (the "
                     "demand-fault rate)", DEFAULTS["churn_pki"]),
    "phase_instructions": doc("0: one regime; else the steady state alternates every this "
                              "many instructions between (cold_pki, churn_pki) and "
                              "(cold_pki_b, churn_pki_b)", DEFAULTS["phase_instructions"]),
    "cold_pki_b": doc("cold accesses per 1,000 instructions in the odd phases",
                      DEFAULTS["cold_pki_b"]),
    "churn_pki_b": doc("fresh pages per 1,000 instructions in the odd phases",
                       DEFAULTS["churn_pki_b"]),
    "churn_block_pages": doc("pages per churned anonymous block", DEFAULTS["churn_block_pages"]),
    "churn_blocks": doc("churned blocks alive at once (the oldest is unmapped beyond it)",
                        DEFAULTS["churn_blocks"]),
    "hot_pages": doc("pages of the hot set", DEFAULTS["hot_pages"]),
    "hot_run": doc("accesses per hot-page visit (one record with a repeat count)",
                   DEFAULTS["hot_run"]),
    "ipr": doc("instructions per data access (mean)", DEFAULTS["ipr"]),
    "store_frac": doc("fraction of accesses that are stores", DEFAULTS["store_frac"]),
    "seed": doc("random seed (same seed -> identical trace)", DEFAULTS["seed"]),
    "va_bits": doc("addresses stay below 2^va_bits", DEFAULTS["va_bits"]),
}

PID = 1
HOT_BASE = 0x0100_0000  # the hot set (the heap)
CHURN_GAP = 1 << 20  # churned blocks start this far above the footprint

# kernel state (int64 slots, kept between chunks)
_RNG, _INSTR, _PHASE, _POS, _SEQ, _CHURN_NEXT, _CHURN_TOUCHED, _CHURN_MAPPED, \
    _CHURN_OLDEST, _CREDIT_COLD, _CREDIT_CHURN, _STEADY0, _NSTATE = range(13)
# phases
_START_MMAP, _START_HOT, _START_COLD, _STEADY, _DONE = range(5)
# parameters (int64 slots; rates scaled by 2^32 per access)
(_P_INSTR, _P_FOOT_PAGES, _P_FOOT_BASE, _P_SEQ, _P_COLD, _P_CHURN, _P_BLOCK, _P_BLOCKS,
 _P_CHURN_BASE, _P_HOT_PAGES, _P_HOT_RUN, _P_IPR_FP, _P_STORE, _P_STRIDE, _P_PHASE_LEN,
 _P_COLD_B, _P_CHURN_B, _NPARAMS) = range(18)
_FP = 1 << 16  # fixed point of ipr


@njit(cache=True, inline="always")
def _next(state):
    """splitmix64: a fast, well-mixed 64-bit stream (deterministic across runs)."""
    z = np.uint64(state[_RNG]) + np.uint64(0x9E3779B97F4A7C15)
    state[_RNG] = np.int64(z)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def _fill(state, prm, kind, addr, size, icount, repeat):
    """Write up to len(kind) records; returns how many (0 when the trace is complete)."""
    n = kind.shape[0]
    r = 0
    mask32 = np.uint64(0xFFFFFFFF)
    while r < n:
        ph = state[_PHASE]
        if ph == _DONE:
            break
        if ph == _START_MMAP:  # map the heap and the footprint
            kind[r] = 8
            addr[r] = prm[_P_FOOT_BASE]
            size[r] = prm[_P_FOOT_PAGES] * PAGE
            icount[r] = 0
            repeat[r] = 1
            r += 1
            state[_PHASE] = _START_HOT
            state[_POS] = 0
            continue
        if ph == _START_HOT or ph == _START_COLD:  # touch every page once, in order
            hot = ph == _START_HOT
            limit = prm[_P_HOT_PAGES] if hot else prm[_P_FOOT_PAGES]
            p = state[_POS]
            if p >= limit:
                state[_PHASE] = _START_COLD if hot else _STEADY
                state[_POS] = 0
                state[_STEADY0] = state[_INSTR]
                continue
            kind[r] = 2  # a store initialises the page
            addr[r] = (HOT_BASE if hot else prm[_P_FOOT_BASE]) + p * PAGE
            size[r] = 8
            icount[r] = 64  # the loop that initialises it
            repeat[r] = 1
            state[_INSTR] += 64
            state[_POS] = p + 1
            r += 1
            continue
        # steady state
        if state[_INSTR] >= prm[_P_INSTR]:
            state[_PHASE] = _DONE
            break
        u = _next(state)
        cold = prm[_P_COLD]
        churn = prm[_P_CHURN]
        if prm[_P_PHASE_LEN] > 0 and ((state[_INSTR] - state[_STEADY0])
                                      // prm[_P_PHASE_LEN]) % 2 == 1:
            cold = prm[_P_COLD_B]
            churn = prm[_P_CHURN_B]
        # credits accumulate the expected cold / churn accesses per access (2^32 = 1.0)
        state[_CREDIT_COLD] += cold
        state[_CREDIT_CHURN] += churn
        ipr_fp = prm[_P_IPR_FP]
        if state[_CREDIT_CHURN] >= 1 << 32:
            # churn: first touch of the next fresh page (map / unmap blocks as needed)
            blk = prm[_P_BLOCK]
            if state[_CHURN_TOUCHED] >= state[_CHURN_MAPPED]:
                if state[_CHURN_MAPPED] - state[_CHURN_OLDEST] >= blk * prm[_P_BLOCKS]:
                    kind[r] = 9  # unmap the oldest block
                    addr[r] = prm[_P_CHURN_BASE] + (state[_CHURN_OLDEST] % (
                        blk * (prm[_P_BLOCKS] + 1))) * PAGE
                    size[r] = blk * PAGE
                    icount[r] = 0
                    repeat[r] = 1
                    state[_CHURN_OLDEST] += blk
                    r += 1
                    continue
                kind[r] = 8
                addr[r] = prm[_P_CHURN_BASE] + (state[_CHURN_MAPPED] % (
                    blk * (prm[_P_BLOCKS] + 1))) * PAGE
                size[r] = blk * PAGE
                icount[r] = 0
                repeat[r] = 1
                state[_CHURN_MAPPED] += blk
                r += 1
                continue
            state[_CREDIT_CHURN] -= 1 << 32
            pg = state[_CHURN_TOUCHED] % (blk * (prm[_P_BLOCKS] + 1))
            state[_CHURN_TOUCHED] += 1
            kind[r] = 2
            addr[r] = prm[_P_CHURN_BASE] + pg * PAGE
            size[r] = 8
            repeat[r] = 1
        elif state[_CREDIT_COLD] >= 1 << 32:
            state[_CREDIT_COLD] -= 1 << 32
            if prm[_P_SEQ] != 0:
                steps = prm[_P_FOOT_PAGES] * (PAGE // prm[_P_STRIDE])
                w = state[_SEQ]
                state[_SEQ] = (w + 1) % steps
                off = w * prm[_P_STRIDE]
            else:
                words = prm[_P_FOOT_PAGES] * (PAGE // 8)
                off = np.int64((u >> np.uint64(32)) % np.uint64(words)) * 8
            kind[r] = 2 if (u & mask32) < np.uint64(prm[_P_STORE]) else 1
            addr[r] = prm[_P_FOOT_BASE] + off
            size[r] = 8
            repeat[r] = 1
        else:
            # a run of hot accesses on one hot page
            page = np.int64((u >> np.uint64(40)) % np.uint64(prm[_P_HOT_PAGES]))
            off = np.int64((u >> np.uint64(8)) & np.uint64(511)) * 8
            kind[r] = 2 if (u & mask32) < np.uint64(prm[_P_STORE]) else 1
            addr[r] = HOT_BASE + page * PAGE + off
            size[r] = 8
            repeat[r] = prm[_P_HOT_RUN]
            # the run's extra accesses took their instructions too
            state[_CREDIT_COLD] += cold * (prm[_P_HOT_RUN] - 1)
            state[_CREDIT_CHURN] += churn * (prm[_P_HOT_RUN] - 1)
        ic = (ipr_fp * repeat[r] + np.int64(u & np.uint64(_FP - 1))) // _FP
        icount[r] = ic
        state[_INSTR] += ic
        r += 1
    return r


class SpecSource:
    """The stand-in as a trace source: ``meta`` and ``chunks(n)`` (re-iterable)."""

    def __init__(self, params: dict, prm: np.ndarray, meta: dict):
        self.params = params
        self._prm = prm
        self.meta = meta

    def chunks(self, chunk_records: int = 1 << 20):
        state = np.zeros(_NSTATE, np.int64)
        state[_RNG] = int(self.params["seed"]) * 0x2545F4914F6CDD1D % (1 << 63)
        cols = (np.empty(chunk_records, np.uint8), np.empty(chunk_records, np.uint64),
                np.empty(chunk_records, np.uint64), np.empty(chunk_records, np.uint32),
                np.empty(chunk_records, np.uint32))
        while True:
            n = _fill(state, self._prm, *cols)
            if n == 0:
                return
            k, a, s, ic, rep = (c[:n].copy() for c in cols)
            yield Trace(kind=k, addr=a, size=s, pid=np.full(n, PID, np.int64), icount=ic,
                        repeat=rep, meta=self.meta)
            if n < chunk_records:
                return

    def to_trace(self) -> Trace:
        return Trace.concat(list(self.chunks()), meta=self.meta)


def spec(*, instructions=DEFAULTS["instructions"], footprint_mib=DEFAULTS["footprint_mib"],
         pattern=DEFAULTS["pattern"], stride=DEFAULTS["stride"], cold_pki=DEFAULTS["cold_pki"],
         churn_pki=DEFAULTS["churn_pki"], phase_instructions=DEFAULTS["phase_instructions"],
         cold_pki_b=DEFAULTS["cold_pki_b"], churn_pki_b=DEFAULTS["churn_pki_b"],
         churn_block_pages=DEFAULTS["churn_block_pages"],
         churn_blocks=DEFAULTS["churn_blocks"], hot_pages=DEFAULTS["hot_pages"],
         hot_run=DEFAULTS["hot_run"], ipr=DEFAULTS["ipr"], store_frac=DEFAULTS["store_frac"],
         seed=DEFAULTS["seed"], va_bits=DEFAULTS["va_bits"]):
    """A SPEC CPU2006 stand-in (see the module docstring); a streaming trace source."""
    chk = ParamCheck("spec")
    chk.range("instructions", instructions, 1000, 1 << 50)
    chk.range("footprint_mib", footprint_mib, 1 / 256, 1 << 20)
    if pattern not in ("random", "sequential"):
        raise chk.error("pattern", f"must be 'random' or 'sequential', got {pattern!r}")
    chk.range("ipr", ipr, 1.0, 1e4)
    if stride not in tuple(1 << k for k in range(3, 13)):
        raise chk.error("stride", f"must be a power of two from 8 to 4096, got {stride!r}")
    chk.range("phase_instructions", phase_instructions, 0, 1 << 50)
    for name, (c, f) in (("cold_pki", (cold_pki, churn_pki)),
                         ("cold_pki_b", (cold_pki_b, churn_pki_b))):
        chk.range(name, c, 0.0, 1000.0 / ipr)
        chk.range(name.replace("cold", "churn"), f, 0.0, 100.0)
        if (c + f) * ipr / 1000.0 > 0.5:
            raise chk.error(name, "with its churn rate makes more than half of the accesses "
                            "cold or fresh; lower them or ipr")
    chk.range("churn_block_pages", churn_block_pages, 1, 1 << 20)
    chk.range("churn_blocks", churn_blocks, 1, 1 << 12)
    chk.range("hot_pages", hot_pages, 1, 1 << 20)
    chk.range("hot_run", hot_run, 1, 1 << 20)
    chk.range("store_frac", store_frac, 0.0, 1.0)
    chk.range("seed", seed, 0, 1 << 62)
    chk.common(va_bits=va_bits)
    foot = pages_of(footprint_mib)
    foot_base = MMAP_BASE
    churn_base = foot_base + foot * PAGE + CHURN_GAP
    churn_end = churn_base + churn_block_pages * (churn_blocks + 1) * PAGE
    chk.fits(churn_end, va_bits, "footprint_mib")
    chk.fits(HOT_BASE + hot_pages * PAGE, va_bits, "hot_pages")
    if HOT_BASE + hot_pages * PAGE > foot_base:
        raise chk.error("hot_pages", "is too large (the hot set must end below 0x1000_0000)")
    prm = np.zeros(_NPARAMS, np.int64)
    prm[_P_INSTR] = instructions
    prm[_P_FOOT_PAGES] = foot
    prm[_P_FOOT_BASE] = foot_base
    prm[_P_SEQ] = 1 if pattern == "sequential" else 0
    prm[_P_COLD] = int(round(cold_pki * ipr / 1000.0 * (1 << 32)))
    prm[_P_CHURN] = int(round(churn_pki * ipr / 1000.0 * (1 << 32)))
    prm[_P_BLOCK] = churn_block_pages
    prm[_P_BLOCKS] = churn_blocks
    prm[_P_CHURN_BASE] = churn_base
    prm[_P_HOT_PAGES] = hot_pages
    prm[_P_HOT_RUN] = hot_run
    prm[_P_IPR_FP] = int(round(ipr * _FP))
    prm[_P_STORE] = int(round(store_frac * 0xFFFFFFFF))
    prm[_P_STRIDE] = stride
    prm[_P_PHASE_LEN] = phase_instructions
    prm[_P_COLD_B] = int(round(cold_pki_b * ipr / 1000.0 * (1 << 32)))
    prm[_P_CHURN_B] = int(round(churn_pki_b * ipr / 1000.0 * (1 << 32)))
    params = dict(instructions=instructions, footprint_mib=footprint_mib, pattern=pattern,
                  stride=stride, cold_pki=cold_pki, churn_pki=churn_pki,
                  phase_instructions=phase_instructions, cold_pki_b=cold_pki_b,
                  churn_pki_b=churn_pki_b, churn_block_pages=churn_block_pages,
                  churn_blocks=churn_blocks, hot_pages=hot_pages, hot_run=hot_run, ipr=ipr,
                  store_frac=store_frac, seed=seed, va_bits=va_bits)
    return SpecSource(params, prm, {"va_bits": va_bits, "streamed": True})


register_generator("spec", spec, PARAMS_DOC)

__all__ = ["DEFAULTS", "PARAMS_DOC", "SpecSource", "spec"]

_ = Kind  # record kinds used above by value: 1 LOAD, 2 STORE, 8 MMAP, 9 MUNMAP
