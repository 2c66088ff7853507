"""What a simulation run produced: counters, the cycle breakdown, per-period samples.

``Result.to_dict()`` is plain JSON (the schema other tools rely on):

- ``mode``, ``policy`` (selective and agile only), ``trace`` (name and provenance), ``config``
- ``records``, ``instructions``, ``accesses``, ``cycles``, ``time_s``,
  ``cycles_breakdown`` (category -> cycles; sums exactly to ``cycles``)
- ``tlb``: ``itlb``/``dtlb``/``stlb``/``nested_tlb`` -> ``hits``, ``misses``
- ``walks``, ``walk_refs``, ``walk_refs_nested``, ``walk_cycles``
- ``guest_page_faults``: ``total``, ``demand``, ``cow``
- ``vm_exits``: ``total``, ``by_reason``;  ``ept_violations``, ``shadow_fills``
- ``rates``: per 1,000 instructions: ``tlb_misses``, ``guest_faults``, ``vm_exits``
- ``counters``: every raw counter;  ``samples``: one dict per sampling period
- ``selective``: switches, time in each mode, decisions with reasons (or null)
- ``agile``: agile paging's policy settings and scans (or null); its moves are the counters
  ``agile_to_nested``, ``agile_to_shadow`` and ``agile_scanned``
- ``warmup``: ``requested`` and actual ``instructions`` / ``records`` of the warm-up
  (``run.warmup_instructions``; 0 without one)
- ``whole_run``: the main figures (instructions, cycles, breakdown, TLB misses, faults, exits,
  rates) over the whole run, warm-up included

Every top-level figure is **steady state**: the run after the warm-up (the whole run when
there is none).  Samples carry ``warmup: true`` for the periods of the warm-up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from . import counters as K


def tlb_misses(c: np.ndarray, stlb_enabled: bool) -> int:
    """Last-level TLB misses (the misses that start page walks)."""
    if stlb_enabled:
        return int(c[K.STLB_MISS])
    return int(c[K.ITLB_MISS] + c[K.DTLB_MISS])


def guest_faults(c: np.ndarray) -> int:
    return int(c[K.GPF_DEMAND] + c[K.GPF_COW])


def per_ki(x: float, instr: float) -> float:
    return 1000.0 * x / instr if instr else 0.0


def sample_dict(index: int, start_instr: int, c: np.ndarray, mode: str, cost,
                stlb_enabled: bool) -> dict:
    bd = K.breakdown(c, cost)
    instr = int(c[K.INSTR])
    misses = tlb_misses(c, stlb_enabled)
    faults = guest_faults(c)
    return {
        "index": index,
        "start_instruction": start_instr,
        "instructions": instr,
        "mode": mode,
        "tlb_misses": misses,
        "guest_page_faults": faults,
        "tlb_misses_per_ki": per_ki(misses, instr),
        "guest_faults_per_ki": per_ki(faults, instr),
        "vm_exits": K.exits_total(c),
        "cycles": K.total_cycles(bd),
        "cycles_breakdown": bd,
        "counters": c.tolist(),
    }


def figures(c: np.ndarray, cost, stlb_enabled: bool) -> dict:
    """The headline figures of a counter vector (a run, its steady state or a period)."""
    bd = K.breakdown(c, cost)
    cyc = K.total_cycles(bd)
    instr = int(c[K.INSTR])
    by_reason = {r: int(c[idx]) for r, (idx, _) in K.EXIT_REASONS.items()}
    misses = tlb_misses(c, stlb_enabled)
    return {
        "instructions": instr,
        "accesses": int(c[K.ACCESSES]),
        "cycles": cyc,
        "time_s": cyc / (cost.clock_ghz * 1e9),
        "cycles_breakdown": bd,
        "tlb_misses": misses,
        "guest_page_faults": {
            "total": guest_faults(c),
            "demand": int(c[K.GPF_DEMAND]),
            "cow": int(c[K.GPF_COW]),
        },
        "vm_exits": {"total": sum(by_reason.values()), "by_reason": by_reason},
        "rates": {
            "tlb_misses_per_ki": per_ki(misses, instr),
            "guest_faults_per_ki": per_ki(guest_faults(c), instr),
            "vm_exits_per_ki": per_ki(sum(by_reason.values()), instr),
        },
    }


@dataclass
class Result:
    mode: str
    counters: np.ndarray  # steady state: after the warm-up (the whole run without one)
    config: dict
    cost: object
    stlb_enabled: bool
    records: int = 0
    trace: dict = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    policy: str | None = None
    selective: dict | None = None
    agile: dict | None = None
    whole_counters: np.ndarray | None = None  # the whole run, warm-up included
    warmup: dict = field(default_factory=lambda: {"requested": 0, "instructions": 0,
                                                  "records": 0})

    @property
    def breakdown(self) -> dict[str, float]:
        return K.breakdown(self.counters, self.cost)

    @property
    def cycles(self) -> float:
        return K.total_cycles(self.breakdown)

    @property
    def instructions(self) -> int:
        return int(self.counters[K.INSTR])

    @property
    def whole(self) -> np.ndarray:
        return self.counters if self.whole_counters is None else self.whole_counters

    def counter(self, name: str) -> int:
        return int(self.counters[K.NAMES.index(name)])

    def to_dict(self, samples: bool = True) -> dict:
        c = self.counters
        f = figures(c, self.cost, self.stlb_enabled)
        return {
            "mode": self.mode,
            "policy": self.policy,
            "trace": self.trace,
            "config": self.config,
            "records": self.records,
            **{k: f[k] for k in ("instructions", "accesses", "cycles", "time_s",
                                 "cycles_breakdown")},
            "tlb": {
                "itlb": {"hits": int(c[K.ITLB_HIT]), "misses": int(c[K.ITLB_MISS])},
                "dtlb": {"hits": int(c[K.DTLB_HIT]), "misses": int(c[K.DTLB_MISS])},
                "stlb": {"hits": int(c[K.STLB_HIT]), "misses": int(c[K.STLB_MISS])},
                "nested_tlb": {"hits": int(c[K.NTLB_HIT]), "misses": int(c[K.NTLB_MISS])},
            },
            "tlb_misses": f["tlb_misses"],
            "walks": int(c[K.WALKS]),
            "walk_refs": int(c[K.WALK_REFS]),
            "walk_refs_nested": int(c[K.WALK_REFS_NESTED]),
            "walk_cycles": f["cycles_breakdown"]["walk"],
            "guest_page_faults": f["guest_page_faults"],
            "vm_exits": f["vm_exits"],
            "ept_violations": int(c[K.EXIT_EPT_VIOLATION]),
            "shadow_fills": int(c[K.SHADOW_FILLS]),
            "rates": f["rates"],
            "warmup": dict(self.warmup),
            "whole_run": figures(self.whole, self.cost, self.stlb_enabled),
            "counters": K.as_dict(c),
            "samples": self.samples if samples else [],
            "selective": self.selective,
            "agile": self.agile,
        }

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(**kw), indent=2)
