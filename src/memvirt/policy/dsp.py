"""``dsp``: the dynamic-switching rules of Wang et al., "Selective Hardware/Software
Memory Virtualization", VEE 2011 (section 3 of the reference notes).

Metrics, all per 1,000 retired instructions of a sampling period:

- FTLB: last-level TLB misses of the period that just ended; FPF: guest page faults
  (counted by the guest, so identical in both modes: hidden faults are not guest faults);
- HTLB ("history of FTLB"): FTLB of the *previous* period.  The paper names HTLB without
  defining it further; the previous sample is the shortest history that makes rule 4
  ("HTLB or FTLB is zero") mean "the TLB was idle in one of the last two periods".  For
  the very first period there is no history and HTLB = FTLB;
- CPT = FPF / FTLB (current P-to-T ratio);
- HPT = mean P-to-T of the ``history`` (default 3) periods *before* the current one,
  skipping periods without TLB misses (their ratio is undefined).  The current period
  is left out so that rules 5 and 6 ask two independent questions (does the recent past
  agree with now?); with no usable history, HPT = CPT.

Rules, in order (first match wins; SP = shadow, HAP = nested):

1. FTLB > TLBU and FPF < guard*PFU -> SP
2. FPF > PFU and FTLB < guard*TLBU -> HAP
3. FTLB < TLBL and FPF < PFL -> stay
4. HTLB or FTLB is zero -> HAP
5. HPT > PTU and CPT > PTU -> HAP
6. HPT < PTL and CPT < PTL -> SP
7. otherwise -> stay

Defaults are the paper's Table 2 (hand-fitted on a Core i7-860 with 5 s periods);
every threshold is a parameter (pfu, pfl, tlbu, tlbl, ptu, ptl, guard, history).
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Policy


def _g(x: float) -> str:
    return f"{x:.4g}"


class DspPolicy(Policy):
    """The seven ordered rules of dynamic switching paging (DSP)."""

    name = "dsp"
    defaults = {
        "pfu": 5000e-7,  # page faults per 1K instructions, upper
        "pfl": 100e-7,  # page faults per 1K instructions, lower
        "tlbu": 10.0,  # TLB misses per 1K instructions, upper
        "tlbl": 0.1,  # TLB misses per 1K instructions, lower
        "ptu": 200e-7,  # P-to-T ratio, upper
        "ptl": 150e-7,  # P-to-T ratio, lower
        "guard": 0.8,  # the 0.8 factor of rules 1 and 2
        "history": 3,  # samples averaged into HPT
    }

    def __init__(self, config=None, **params):
        super().__init__(config, **params)
        if self.params["history"] < 1:
            raise ConfigError("policy 'dsp' parameter 'history' must be at least 1")

    def metrics(self, samples: list[dict]) -> dict[str, float]:
        """FTLB, FPF, HTLB, CPT and HPT after the last sample (CPT None when FTLB is 0)."""
        ftlb, fpf = self.rates(samples[-1])
        htlb = self.rates(samples[-2])[0] if len(samples) >= 2 else ftlb
        cpt = fpf / ftlb if ftlb > 0 else None
        ratios = []
        for s in samples[-1 - self.params["history"]:-1]:
            t, f = self.rates(s)
            if t > 0:
                ratios.append(f / t)
        hpt = sum(ratios) / len(ratios) if ratios else cpt
        return {"ftlb": ftlb, "fpf": fpf, "htlb": htlb, "cpt": cpt, "hpt": hpt}

    def decide(self, samples, current):
        p = self.params
        m = self.metrics(samples)
        ftlb, fpf, htlb, cpt, hpt = m["ftlb"], m["fpf"], m["htlb"], m["cpt"], m["hpt"]
        g = p["guard"]
        if ftlb > p["tlbu"] and fpf < g * p["pfu"]:
            return "shadow", (f"rule 1: FTLB {_g(ftlb)} > TLBU {_g(p['tlbu'])} and FPF {_g(fpf)}"
                              f" < {g}*PFU {_g(g * p['pfu'])} -> shadow")
        if fpf > p["pfu"] and ftlb < g * p["tlbu"]:
            return "nested", (f"rule 2: FPF {_g(fpf)} > PFU {_g(p['pfu'])} and FTLB {_g(ftlb)}"
                              f" < {g}*TLBU {_g(g * p['tlbu'])} -> nested")
        if ftlb < p["tlbl"] and fpf < p["pfl"]:
            return current, (f"rule 3: FTLB {_g(ftlb)} < TLBL {_g(p['tlbl'])} and FPF {_g(fpf)}"
                             f" < PFL {_g(p['pfl'])} -> stay in {current}")
        if htlb == 0 or ftlb == 0:
            return "nested", f"rule 4: HTLB {_g(htlb)} or FTLB {_g(ftlb)} is zero -> nested"
        # From here FTLB > 0, so CPT and HPT are defined.
        if hpt > p["ptu"] and cpt > p["ptu"]:
            return "nested", (f"rule 5: HPT {_g(hpt)} > PTU {_g(p['ptu'])} and CPT {_g(cpt)}"
                              f" > PTU -> nested")
        if hpt < p["ptl"] and cpt < p["ptl"]:
            return "shadow", (f"rule 6: HPT {_g(hpt)} < PTL {_g(p['ptl'])} and CPT {_g(cpt)}"
                              f" < PTL -> shadow")
        return current, (f"rule 7: no rule applies (FTLB {_g(ftlb)}, FPF {_g(fpf)}, HPT "
                         f"{_g(hpt)}, CPT {_g(cpt)}) -> stay in {current}")

