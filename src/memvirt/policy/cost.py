"""``cost``: switch when the cost model says the other mode is cheaper, net of the switch.

No thresholds are fitted: every number is a unit cost of ``config.cost`` or a count
the engine observed.  At each period end the policy estimates what the period's work
would have cost in the *other* mode, predicts the saving over the coming periods, and
switches when it exceeds the one-time cost of switching.

Estimator (cycles; ``exit(r)`` = ``vm_exit`` + the VMM's handler for reason ``r``):

Under nested, what shadow would change:

- saves the nested dimension of the walks: ``walk_refs_nested`` x the period's mean cycles
  per walk reference (the hierarchy's levels as the period's references hit them) +
  ``nested_tlb_hits`` x ``nested_tlb_hit``; the guest-dimension references are the same in
  both modes;
- pays exits for what the guest did without exiting:
  - each guest fault (demand or COW): ``exit(pf_true)`` for the fault plus
    ``exit(pf_hidden)`` for filling the new entry afterwards (the trapped PTE write or the
    hidden fault that follows it cost about the same);
  - guest PTE writes in bulk (munmap, fork, exit): one ``exit(pte_write)`` each, or with
    out-of-sync leaf pages (``vmm.out_of_sync``) about one per bulk operation
    (``min(pte_updates, munmaps + brks + process ops)``), plus one ``hv_oos_resync`` each;
  - CR3 loads and full guest TLB flushes (``tlb_flushes`` minus those made by process
    teardown): ``exit(cr3_load)`` each; INVLPGs: ``exit(invlpg)`` each;
  - process creation/exit: ``hv_process`` per process operation (shadow roots);
  - page-table pages mapped through kmap_atomic (32-bit guests with highmem page tables):
    ``exit(pte_write)`` + ``exit(invlpg)`` (+ ``hv_oos_resync``) each.

Under shadow, what nested would change:

- saves the VMM's shadow work this period, taken from the cost breakdown: true faults,
  PTE-write emulation, CR3 loads, INVLPGs and shadow management, plus the *recurring*
  hidden faults (hidden faults right after a switch are the refill already paid for:
  the first R hidden faults after a nested->shadow switch are not counted, R being the
  refill estimate made at the switch);
- pays the nested dimension of its walks: ``walks`` x (EPT references per walk x the
  period's mean cycles per walk reference + nested TLB hits per walk x ``nested_tlb_hit``).  The per-walk
  numbers are measured in the most recent nested period with walks; with none yet, the
  prior is one EPT reference per translated guest-physical address, (references per
  1D walk + 1), the nested TLB and nested paging-structure caches absorbing the rest.

Switch costs:

- shadow -> nested: ``mode_switch`` + live shadow pages x ``hv_shadow_page_free``
  (live = shadow pages built - freed, from the counters);
- nested -> shadow: ``mode_switch`` + R x ``exit(pf_hidden)``, the shadow refill, with
  R = the pages the new shadow will have to fill, bounded by the guest memory ever used
  (``guest_frames - pt_pages``, cumulative; with demand population at most the frames
  backed, ``host_frames``) and by the walks of the
  expected periods (below) at this period's rate (after the switch's TLB flush every
  distinct page touched costs at least one walk).

Decision.  Every period is labelled with the mode estimated cheaper for it.  The
*regime* is the run of periods, ending now, that favour the other mode; ``age`` is its
length and ``saving`` the mean estimated saving of its periods spent in the current
mode.  With ``adaptive = false`` the regime is expected to last ``horizon`` more
periods.  With ``adaptive = true`` (the default) the expectation learns from the trace:

    expected = max(horizon, age, mean length of past regimes favouring the other mode - age)

(a regime that has lasted ``age`` periods is expected to last about as long again --
the scale-free guess -- and a recurring phase is expected to last as long as it did
before), and the switch cost also includes the *exit lag*: when the regime ends, the VM
spends about one period in the wrong mode before the next decision, which costs what
the first period of past regimes favouring the current mode cost (their estimated
difference; none are known before the first such transition).  Switch if

    saving x expected > switch cost.

Once ``age`` dominates this is the ski-rental rule: switch when the cycles lost by not
having switched (the sum of the regime's savings) reach the switch cost, which never
pays more than twice the best choice in hindsight for that regime.  A short period or a
large refill therefore makes the policy wait instead of oscillating, without any
threshold tied to the period length.  The saving, the expected periods, the switch cost
and the verdict are in the reason.
"""

from __future__ import annotations

import numpy as np

from .. import counters as K
from ..errors import ConfigError
from .base import Policy, other_mode


class CostPolicy(Policy):
    """Predict the other mode's cost from this period's counters; switch if it pays off."""

    name = "cost"
    defaults = {
        "horizon": 2.0,  # periods over which a switch must pay for itself (at least)
        "adaptive": True,  # learn regime lengths and the exit lag from the run so far
    }

    def __init__(self, config=None, **params):
        super().__init__(config, **params)
        if self.params["horizon"] <= 0:
            raise ConfigError("policy 'cost' parameter 'horizon' must be positive")
        self._refill_left = 0.0  # hidden faults still expected from the last refill
        # per walk: (EPT refs, NTLB hits, cycles per EPT ref), from the last nested period
        self._nested_per_walk: tuple[float, float, float] | None = None
        self._refill_part: list[int] = []  # per sample seen: hidden faults that were refill
        self._saving: list[float] = []  # per sample seen: estimated saving of the other mode
        self._runs: list[list] = []  # [mode estimated cheaper, periods, first period] runs
        self._parts: dict[str, float] = {}  # the last sample's estimate, by component

    # ------------------------------------------------------------------ pieces
    def ref_cycles(self, c: np.ndarray, nested: bool = False) -> float:
        """Mean cycles of one walk reference in a period (by the levels its references hit),
        of the nested dimension's references only with ``nested``."""
        first = K.NREF_L1 if nested else K.REF_L1
        counts = [int(c[first + i]) for i in range(4)]
        refs = sum(counts)
        if not refs:
            return self.unit("l2_latency")
        lat = sum(n * self.unit(u) for n, u in zip(counts, (
            "l1d_latency", "l2_latency", "l3_latency", "dram_latency")))
        return lat / refs

    def shadow_delta(self, c: np.ndarray) -> tuple[float, dict]:
        """Cycles shadow would add (+) or save (-) for a period that ran nested."""
        save = (int(c[K.WALK_REFS_NESTED]) * self.ref_cycles(c, nested=True)
                + int(c[K.NTLB_HIT]) * self.unit("nested_tlb_hit"))
        faults = int(c[K.GPF_DEMAND] + c[K.GPF_COW])
        pte = int(c[K.PTE_UPDATES])
        bulk_ops = int(c[K.MUNMAPS] + c[K.BRKS] + c[K.PROCESS_OPS])
        oos = self.config.vmm.out_of_sync
        pte_exits = min(pte, bulk_ops) if oos else pte
        teardown_flushes = int(c[K.EXITS] + c[K.EXECS] + c[K.MODE_SWITCHES])
        if not self.config.hw.pcid:
            teardown_flushes += int(c[K.CR3_LOADS])
        flushes = max(0, int(c[K.TLB_FLUSHES]) - teardown_flushes)
        pay = {
            "faults": faults * (self.exit_cycles("pf_true") + self.exit_cycles("pf_hidden")),
            "pte_writes": pte_exits * (self.exit_cycles("unsync" if oos else "pte_write")
                                       + (self.unit("hv_oos_resync") if oos else 0.0)),
            "cr3": (int(c[K.CR3_LOADS]) + flushes) * self.exit_cycles("cr3_load"),
            "invlpg": int(c[K.INVLPGS]) * self.exit_cycles("invlpg"),
            "process": int(c[K.PROCESS_OPS]) * self.unit("hv_process"),
            "highpte": int(c[K.HIGHPTE_MAPS]) * (self.exit_cycles("unsync" if oos else "pte_write")
                                                  + self.exit_cycles("invlpg")
                                                  + (self.unit("hv_oos_resync") if oos else 0.0)),
        }
        parts = {"walk_saving": save, **pay}
        return sum(pay.values()) - save, parts

    def nested_delta(self, c: np.ndarray, hidden_recurring: int) -> tuple[float, dict]:
        """Cycles nested would add (+) or save (-) for a period that ran under shadow."""
        bd = K.breakdown(c, self.cost)
        save = (bd["vmm_pf_true"] + bd["vmm_pte_write"] + bd["vmm_unsync"] + bd["vmm_cr3_load"]
                + bd["vmm_invlpg"] + bd["vmm_shadow_mgmt"]
                + hidden_recurring * self.exit_cycles("pf_hidden"))
        walks = int(c[K.WALKS])
        if self._nested_per_walk is not None:
            refs, ntlb, per_ref = self._nested_per_walk
        else:
            refs, ntlb = ((int(c[K.WALK_REFS]) / walks + 1.0) if walks else 0.0), 0.0
            per_ref = self.ref_cycles(c)
        pay = walks * (refs * per_ref + ntlb * self.unit("nested_tlb_hit"))
        return pay - save, {"exit_saving": save, "extra_walks": pay}

    def refill_pages(self, samples: list[dict], periods: float) -> int:
        """Pages a new shadow would fill over ``periods`` periods (see the module docstring)."""
        tot = self.cumulative(samples)
        used = int(tot[K.GUEST_FRAMES])
        if self.config.host.populate == "demand":
            used = min(used, int(tot[K.HOST_FRAMES]))
        backed = used - int(tot[K.PT_PAGES])
        walks = int(self.counters(samples[-1])[K.WALKS])
        return max(0, min(backed, int(np.ceil(walks * periods))))

    def switch_cost(self, samples: list[dict], current: str,
                    periods: float) -> tuple[float, str]:
        base = self.unit("mode_switch")
        if current == "shadow":
            tot = self.cumulative(samples)
            live = max(0, int(tot[K.SHADOW_PAGES]) - int(tot[K.SHADOW_PAGES_FREED]))
            return base + live * self.unit("hv_shadow_page_free"), f"{live} shadow pages to free"
        pages = self.refill_pages(samples, periods)
        return base + pages * self.exit_cycles("pf_hidden"), f"refill of ~{pages} pages"

    # ------------------------------------------------------------------ the decision
    def _account(self, samples: list[dict]) -> None:
        """Consume new samples: refill bookkeeping and the measured nested walk length."""
        if len(samples) < len(self._refill_part):  # a new run with the same instance
            self._refill_part, self._saving, self._runs = [], [], []
            self._refill_left, self._nested_per_walk = 0.0, None
        for s in samples[len(self._refill_part):]:
            c = self.counters(s)
            if s["mode"] == "nested":
                if int(c[K.WALKS]) > 0:
                    w = int(c[K.WALKS])
                    self._nested_per_walk = (int(c[K.WALK_REFS_NESTED]) / w,
                                             int(c[K.NTLB_HIT]) / w,
                                             self.ref_cycles(c, nested=True))
                delta, self._parts = self.shadow_delta(c)
                part = 0
            else:
                part = min(int(c[K.EXIT_PF_HIDDEN]), int(self._refill_left))
                self._refill_left -= part
                delta, self._parts = self.nested_delta(c, int(c[K.EXIT_PF_HIDDEN]) - part)
            self._refill_part.append(part)
            self._saving.append(-delta)
            fav = other_mode(s["mode"]) if delta < 0 else s["mode"]
            if self._runs and self._runs[-1][0] == fav:
                self._runs[-1][1] += 1
            else:
                self._runs.append([fav, 1, len(self._saving) - 1])

    def decide(self, samples, current):
        self._account(samples)
        other = other_mode(current)
        if samples[-1]["mode"] != current:  # cannot happen with api.simulate
            return current, "cost: the last period ran in another mode -> stay"
        detail = ", ".join(f"{k} {v:.3g}" for k, v in self._parts.items())
        now = self._saving[-1]
        if now <= 0:
            return current, (f"cost: {other} would cost {-now:.3g} cycles/period more "
                             f"({detail}) -> stay in {current}")
        # The current regime: the periods, ending now, in which `other` was cheaper.
        age = self._runs[-1][1]
        mine = [self._saving[i] for i in range(len(samples) - age, len(samples))
                if samples[i]["mode"] == current]
        saving = sum(mine) / len(mine)
        periods = self.params["horizon"]
        lag = 0.0
        if self.params["adaptive"]:
            past = [n for m, n, _ in self._runs[:-1] if m == other]
            periods = max(periods, float(age))
            if past:
                periods = max(periods, sum(past) / len(past) - age)
            # When the regime ends, the VM spends about one period in `other` while
            # `current` is cheaper again (a decision needs a period of evidence): it loses
            # what the first period of past regimes favouring `current` cost.  The first
            # run of the trace has no transition to learn from.
            starts = [abs(self._saving[i]) for m, _, i in self._runs[:-1]
                      if m == current and i > 0]
            lag = sum(starts) / len(starts) if starts else 0.0
        cost, what = self.switch_cost(samples, current, periods)
        if lag:
            cost += lag
            what += f", lag {lag:.3g} when the regime ends"
        head = (f"cost: {other} saves {saving:.3g} cycles/period, cheaper for the last {age} "
                f"period(s) (now: {detail}); x{periods:.3g} periods expected")
        if saving * periods > cost:
            if other == "shadow":
                self._refill_left = float(self.refill_pages(samples, periods))
            return other, f"{head} > switch {cost:.3g} ({what}) -> {other}"
        return current, f"{head} <= switch {cost:.3g} ({what}) -> stay in {current}"

