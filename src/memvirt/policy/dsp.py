"""``dsp``: the dynamic-switching rules of Wang et al., "Selective Hardware/Software
Memory Virtualization", VEE 2011 (section 3 of the reference notes).

Metrics, all per 1,000 retired instructions of a *window*:

- the window is the last ``window`` instructions (at least the period just ended; made of
  whole sampling periods).  The study used 5 s periods (~10^10 instructions); its thresholds
  only mean something over enough instructions: the lower fault threshold PFL is 10^-5
  faults per 1,000 instructions, so a window must hold 10^8 instructions for one fault to
  be a rate at PFL.  The default window, ``auto``, holds ``min_events`` (10) faults at PFL:
  10 x 1,000 / PFL = 10^9 instructions, whatever the sampling period, so the decision does
  not hang on whole events per period and the same steady rates give the same mode with
  any period.  A window shorter than one fault at PFL is warned about (``warnings``);
- FTLB: last-level TLB misses of the current window; FPF: guest page faults (counted by
  the guest, so identical in both modes: hidden faults are not guest faults);
- HTLB ("history of FTLB"): FTLB of the *previous* window (the paper names HTLB without
  defining it further; the previous period is the shortest history that makes rule 4,
  "HTLB or FTLB is zero", mean "the TLB was idle recently").  With no history HTLB = FTLB;
- CPT = FPF / FTLB (current P-to-T ratio);
- HPT = mean P-to-T of the ``history`` (default 3) windows *before* the current one,
  skipping windows without TLB misses (their ratio is undefined).  The current window is
  left out so that rules 5 and 6 ask two independent questions (does the recent past
  agree with now?); with no usable history, HPT = CPT.

With ``window`` <= the sampling period every window is one period: the rules as the paper
states them, period by period.

Rules, in order (first match wins; SP = shadow, HAP = nested):

1. FTLB > TLBU and FPF < guard*PFU -> SP
2. FPF > PFU and FTLB < guard*TLBU -> HAP
3. FTLB < TLBL and FPF < PFL -> stay
4. HTLB or FTLB is zero -> HAP
5. HPT > PTU and CPT > PTU -> HAP
6. HPT < PTL and CPT < PTL -> SP
7. otherwise -> stay

Defaults are the paper's Table 2 (hand-fitted on a Core i7-860 with 5 s periods);
every threshold is a parameter (pfu, pfl, tlbu, tlbl, ptu, ptl, guard, history, window,
min_events).
"""

from __future__ import annotations

import warnings

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
        "history": 3,  # windows averaged into HPT
        "window": None,  # instructions per window; None ("auto"): min_events faults at PFL
        "min_events": 10,  # faults at PFL that an auto window holds
    }

    def __init__(self, config=None, **params):
        super().__init__(config, **params)
        p = self.params
        if p["history"] < 1:
            raise ConfigError("policy 'dsp' parameter 'history' must be at least 1")
        if not p["min_events"] > 0:
            raise ConfigError("policy 'dsp' parameter 'min_events' must be positive")
        if not p["pfl"] > 0:
            raise ConfigError("policy 'dsp' parameter 'pfl' must be positive")
        if p["window"] is None or p["window"] == "auto":
            self.window = int(round(p["min_events"] * 1000.0 / p["pfl"]))
        elif isinstance(p["window"], int | float) and not isinstance(p["window"], bool) \
                and p["window"] >= 1:
            self.window = int(p["window"])
        else:
            raise ConfigError(f"policy 'dsp' parameter 'window' must be 'auto' or a number of "
                              f"instructions >= 1, not {p['window']!r}")
        period = self.config.selective.period_instructions if self.config else 0
        span = max(self.window, period)
        self.warnings = []
        one = 1000.0 / span  # the rate of one fault per window
        if one > p["pfl"]:
            self.warnings.append(
                f"dsp: a window of {span:,} instructions cannot measure a fault rate at PFL = "
                f"{p['pfl']:.3g}/Ki (one fault is {one:.3g}/Ki): its decisions hang on single "
                f"faults; use a window of at least {1000.0 / p['pfl']:,.0f} instructions")
            warnings.warn(self.warnings[-1], stacklevel=2)

    def _windows(self, samples, count: int) -> list[tuple[float, float]]:
        """(TLB misses, faults) per 1,000 instructions of the last ``count`` windows, newest
        first; a window is the fewest latest periods holding ``self.window`` instructions."""
        out = []
        i = len(samples)
        while i > 0 and len(out) < count:
            instr = misses = faults = 0
            while i > 0 and (instr < self.window or instr == 0):
                i -= 1
                s = samples[i]
                instr += s["instructions"]
                misses += s["tlb_misses"]
                faults += s["guest_page_faults"]
            out.append((1000.0 * misses / instr, 1000.0 * faults / instr) if instr
                       else (0.0, 0.0))
        return out

    def metrics(self, samples: list[dict]) -> dict[str, float]:
        """FTLB, FPF, HTLB, CPT and HPT after the last sample (CPT None when FTLB is 0)."""
        wins = self._windows(samples, 2 + self.params["history"])
        ftlb, fpf = wins[0]
        htlb = wins[1][0] if len(wins) >= 2 else ftlb
        cpt = fpf / ftlb if ftlb > 0 else None
        ratios = [f / t for t, f in wins[1:1 + self.params["history"]] if t > 0]
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

