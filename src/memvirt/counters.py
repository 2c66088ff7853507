"""Event counters produced by the engine, and the cost model that turns them into cycles.

The compiled kernels only *count* events (walk references that hit or miss the PTE
cache, exits by reason, faults...).  Cycles are a linear function of those counts,
computed here from ``CostConfig``: so the same counters give the breakdown for a
whole run or for one sampling period, policies can price "what the other mode
would have cost", and the breakdown adds up to the total exactly.
"""

from __future__ import annotations

import numpy as np

# Counter indices (module-level ints are compile-time constants inside numba code).
INSTR = 0
ACCESSES = 1  # translations requested (a Lackey M counts twice, a page-crossing access twice)
IFETCH = 2
LOADS = 3
STORES = 4
ITLB_HIT = 5
ITLB_MISS = 6
DTLB_HIT = 7
DTLB_MISS = 8
STLB_HIT = 9
STLB_MISS = 10
WALKS = 11
WALK_REFS = 12  # all memory references made by walks (both dimensions)
WALK_REFS_NESTED = 13  # references into the nested (EPT) table
REF_L1 = 14  # walk references by the level of the hierarchy that served them:
REF_L2 = 15  # REF_L1 + level (hw/memory.py LEVEL_*)
REF_L3 = 16
REF_DRAM = 17
PSC_HIT = 18
NTLB_HIT = 19
NTLB_MISS = 20
NPSC_HIT = 21
GPF_DEMAND = 22
GPF_COW = 23
EXIT_PF_TRUE = 24
EXIT_PF_HIDDEN = 25
EXIT_PTE_WRITE = 26
EXIT_CR3 = 27
EXIT_INVLPG = 28
EXIT_EPT_VIOLATION = 29
EXIT_POPULATE = 30
SHADOW_FILLS = 31  # shadow entries filled (hidden faults and propagated writes)
SHADOW_PAGES_FREED = 32
OOS_RESYNCS = 33
SHADOW_ROOTS = 34  # shadow roots built or torn down (process create/exit under shadow)
CR3_LOADS = 35
INVLPGS = 36
TLB_FLUSHES = 37
SYSCALLS = 38
PTE_UPDATES = 39  # guest PTE writes done in bulk by the guest kernel (fork, munmap, exit)
PROCESS_OPS = 40  # fork, exec, exit
FORKS = 41
EXECS = 42
EXITS = 43
MMAPS = 44
MUNMAPS = 45
BRKS = 46
GUEST_FRAMES = 47  # guest frames allocated (data + page-table pages)
HOST_FRAMES = 48  # 4 KiB host frames newly backing guest memory
PT_PAGES = 49  # guest page-table pages allocated
MODE_SWITCHES = 50
SHADOW_PAGES = 51  # shadow pages built
SHADOW_PREFETCHED = 52  # shadow entries filled ahead by a hidden fault (Xen sh_prefetch)
DATA_L1 = 53  # program data accesses by the level that served them: DATA_L1 + level
DATA_L2 = 54
DATA_L3 = 55
DATA_DRAM = 56
VMM_TLB_FILLS = 57  # TLB entries the VMM's handlers had to (re)load: their own misses
VMM_LINE_FILLS = 58  # cache lines the VMM's handlers brought into the L1D
HIGHPTE_MAPS = 59  # kmap_atomic of a page-table page (32-bit guest, page tables in highmem)
NREF_L1 = 60  # the nested (EPT) dimension's walk references by level: NREF_L1 + level
NREF_L2 = 61
NREF_L3 = 62
NREF_DRAM = 63
EXIT_UNSYNC = 64  # a write to an in-sync leaf page-table page that unsyncs it (Xen OOS)
AGILE_TO_NESTED = 65  # agile: page-table subtrees (or whole address spaces) moved to nested
AGILE_TO_SHADOW = 66  # agile: nested subtrees (or address spaces) moved back to shadow by a scan
AGILE_SCANNED = 67  # agile: nested subtrees whose dirty state a periodic scan read
NCOUNTERS = 68

NAMES = [
    "instructions", "accesses", "ifetch", "loads", "stores",
    "itlb_hits", "itlb_misses", "dtlb_hits", "dtlb_misses", "stlb_hits", "stlb_misses",
    "walks", "walk_refs", "walk_refs_nested",
    "walk_refs_l1", "walk_refs_l2", "walk_refs_l3", "walk_refs_dram",
    "psc_hits", "nested_tlb_hits", "nested_tlb_misses", "nested_psc_hits",
    "guest_faults_demand", "guest_faults_cow",
    "exit_pf_true", "exit_pf_hidden", "exit_pte_write", "exit_cr3", "exit_invlpg",
    "exit_ept_violation", "exit_populate",
    "shadow_fills", "shadow_pages_freed", "oos_resyncs", "shadow_roots",
    "cr3_loads", "invlpgs", "tlb_flushes", "syscalls", "pte_updates", "process_ops",
    "forks", "execs", "exits", "mmaps", "munmaps", "brks",
    "guest_frames", "host_frames", "pt_pages", "mode_switches", "shadow_pages",
    "shadow_prefetched",
    "data_l1", "data_l2", "data_l3", "data_dram",
    "vmm_tlb_fills", "vmm_line_fills", "highpte_maps",
    "walk_refs_nested_l1", "walk_refs_nested_l2", "walk_refs_nested_l3", "walk_refs_nested_dram",
    "exit_unsync", "agile_to_nested", "agile_to_shadow", "agile_scanned",
]
assert len(NAMES) == NCOUNTERS

# VM exit reasons, their counter and the cost parameter for the VMM's work.
EXIT_REASONS = {
    "pf_true": (EXIT_PF_TRUE, "hv_pf_true"),
    "pf_hidden": (EXIT_PF_HIDDEN, "hv_pf_hidden"),
    "pte_write": (EXIT_PTE_WRITE, "hv_pte_write"),
    "unsync": (EXIT_UNSYNC, "hv_unsync"),
    "cr3_load": (EXIT_CR3, "hv_cr3"),
    "invlpg": (EXIT_INVLPG, "hv_invlpg"),
    "ept_violation": (EXIT_EPT_VIOLATION, "hv_ept_violation"),
    "populate": (EXIT_POPULATE, "hv_ept_violation"),
}

BREAKDOWN_KEYS = (
    "base", "memory", "tlb", "walk", "guest_fault", "guest_os",
    *(f"vmm_{r}" for r in EXIT_REASONS), "vmm_shadow_mgmt", "mode_switch", "vmm_agile",
)


def exits_total(c: np.ndarray) -> int:
    return int(sum(int(c[idx]) for idx, _ in EXIT_REASONS.values()))


def breakdown(c: np.ndarray, cost) -> dict[str, float]:
    """Cycles by category for a counter vector ``c`` under cost parameters ``cost``."""
    c = [float(x) for x in c]
    out = {
        "base": c[INSTR] * cost.base_cpi,
        # data accesses served below the L1D stall the core (part of the latency is hidden)
        "memory": (c[DATA_L2] * (cost.l2_latency - cost.l1d_latency)
                   + c[DATA_L3] * (cost.l3_latency - cost.l1d_latency)
                   + c[DATA_DRAM] * (cost.dram_latency - cost.l1d_latency))
        * cost.data_stall_fraction,
        "tlb": c[STLB_HIT] * cost.stlb_hit,
        # a walk is a chain of dependent loads: each reference costs its full latency
        "walk": c[WALKS] * cost.walk_base + c[REF_L1] * cost.l1d_latency
        + c[REF_L2] * cost.l2_latency + c[REF_L3] * cost.l3_latency
        + c[REF_DRAM] * cost.dram_latency + c[PSC_HIT] * cost.psc_hit
        + c[NTLB_HIT] * cost.nested_tlb_hit,
        "guest_fault": c[GPF_DEMAND] * cost.guest_fault + c[GPF_COW] * cost.guest_cow_fault,
        "guest_os": c[SYSCALLS] * cost.guest_syscall + c[PTE_UPDATES] * cost.guest_pte_update
        + c[CR3_LOADS] * cost.guest_context_switch + c[PROCESS_OPS] * cost.guest_process
        + c[INVLPGS] * cost.invlpg + c[TLB_FLUSHES] * cost.tlb_flush,
    }
    for reason, (idx, param) in EXIT_REASONS.items():
        out[f"vmm_{reason}"] = c[idx] * (cost.vm_exit + getattr(cost, param))
    out["vmm_pf_hidden"] += c[SHADOW_PREFETCHED] * cost.hv_shadow_prefetch
    out["vmm_shadow_mgmt"] = (c[SHADOW_PAGES_FREED] * cost.hv_shadow_page_free
                              + c[OOS_RESYNCS] * cost.hv_oos_resync
                              + c[SHADOW_ROOTS] * cost.hv_process)
    out["mode_switch"] = c[MODE_SWITCHES] * cost.mode_switch
    out["vmm_agile"] = ((c[AGILE_TO_NESTED] + c[AGILE_TO_SHADOW]) * cost.hv_agile_move
                        + c[AGILE_SCANNED] * cost.hv_agile_scan)
    return out


def total_cycles(bd: dict[str, float]) -> float:
    """The total is by definition the sum of the breakdown, in its key order."""
    t = 0.0
    for k in BREAKDOWN_KEYS:
        t += bd[k]
    return t


def as_dict(c: np.ndarray) -> dict[str, int]:
    return {name: int(c[i]) for i, name in enumerate(NAMES)}
