"""The dsp policy: the seven rules of Wang et al. (VEE 2011), in order, on hand-made samples.

Table 2 defaults: PFU 5e-4, PFL 1e-5 faults/1K instr; TLBU 10, TLBL 0.1 misses/1K instr;
PTU 2e-5, PTL 1.5e-5 (P-to-T = faults per TLB miss).  Samples here have 10^10 instructions
(about the paper's 5 s period), so the tiny rates are whole numbers of events.
"""

from __future__ import annotations

import pytest

from memvirt.config import Config
from memvirt.errors import ConfigError
from memvirt.policy import make_policy
from memvirt.policy.dsp import DspPolicy

INSTR = 10**10


def sample(ftlb: float, fpf: float, mode: str = "nested") -> dict:
    """A sample with the given rates per 1K instructions."""
    return {"instructions": INSTR, "mode": mode,
            "tlb_misses": round(ftlb * INSTR / 1000),
            "guest_page_faults": round(fpf * INSTR / 1000)}


def decide(seq: list[tuple[float, float]], current: str, **params) -> tuple[str, str]:
    pol = DspPolicy(Config(), **params)
    return pol.decide([sample(t, f, current) for t, f in seq], current)


def rule(reason: str) -> int:
    assert reason.startswith("rule "), reason
    return int(reason.split(":")[0].split()[1])


# Rates used below (per 1K instructions).
TLB_HEAVY = (20.0, 0.0)  # FTLB > TLBU, no faults
FAULT_HEAVY = (5.0, 0.002)  # FPF > PFU, FTLB < 0.8*TLBU
HIGH_PT = (5.0, 3e-4)  # P-to-T 6e-5 > PTU, FPF below PFU, FTLB between the bounds
LOW_PT = (5.0, 5e-5)  # P-to-T 1e-5 < PTL, FPF above PFL
MID_PT = (5.0, 8.75e-5)  # P-to-T 1.75e-5, between PTL and PTU


@pytest.mark.parametrize("current", ["shadow", "nested"])
def test_rule1_tlb_heavy_goes_shadow(current):
    mode, why = decide([TLB_HEAVY], current)
    assert (mode, rule(why)) == ("shadow", 1)
    assert "FTLB 20 > TLBU 10" in why


def test_rule1_precedes_rule4_and_rule5():
    # Previous period had no TLB misses (rule 4 would say nested) ...
    mode, why = decide([(0.0, 0.0), TLB_HEAVY], "nested")
    assert (mode, rule(why)) == ("shadow", 1)
    # ... and P-to-T above PTU now and before (rule 5 would say nested): FTLB 11, FPF 3e-4
    # (< 0.8*PFU), so CPT = 2.7e-5 > PTU.
    mode, why = decide([HIGH_PT, HIGH_PT, HIGH_PT, (11.0, 3e-4)], "nested")
    assert (mode, rule(why)) == ("shadow", 1)


def test_rule1_guard_on_faults():
    # FPF 4.5e-4 is below PFU but not below 0.8*PFU: rule 1 does not fire; rule 5 does.
    mode, why = decide([(20.0, 4.5e-4)], "shadow")
    assert (mode, rule(why)) == ("nested", 5)


@pytest.mark.parametrize("current", ["shadow", "nested"])
def test_rule2_fault_heavy_goes_nested(current):
    mode, why = decide([FAULT_HEAVY], current)
    assert (mode, rule(why)) == ("nested", 2)
    assert "FPF 0.002 > PFU 0.0005" in why


def test_rule2_precedes_rule4_and_guard_on_tlb():
    mode, why = decide([(0.0, 0.0), FAULT_HEAVY], "shadow")  # HTLB = 0: rule 2 still first
    assert rule(why) == 2
    # FTLB 9 is below TLBU but not below 0.8*TLBU: rule 2 does not fire; rule 5 does.
    mode, why = decide([(9.0, 0.002)], "shadow")
    assert (mode, rule(why)) == ("nested", 5)


@pytest.mark.parametrize("current", ["shadow", "nested"])
def test_rule3_idle_stays(current):
    mode, why = decide([(0.05, 0.0)], current)
    assert (mode, rule(why)) == (current, 3)


def test_rule3_precedes_rule4_with_zero_tlb_misses():
    # No TLB misses and no faults: rule 3 (stay), not rule 4 (nested).
    mode, why = decide([(0.0, 0.0), (0.0, 0.0)], "shadow")
    assert (mode, rule(why)) == ("shadow", 3)


def test_rule4_zero_tlb_misses_goes_nested():
    # FTLB = 0 with some faults (FPF 5e-5: above PFL, below PFU): rule 4.
    mode, why = decide([(0.0, 5e-5)], "shadow")
    assert (mode, rule(why)) == ("nested", 4)
    assert "FTLB 0 is zero" in why


def test_rule4_zero_history_precedes_rule6():
    # HTLB (previous period's FTLB) is 0; now P-to-T is low (rule 6 would say shadow).
    mode, why = decide([(0.0, 0.0), LOW_PT], "shadow")
    assert (mode, rule(why)) == ("nested", 4)
    assert "HTLB 0" in why


def test_rule5_high_p_to_t_goes_nested():
    mode, why = decide([HIGH_PT, HIGH_PT, HIGH_PT, HIGH_PT], "shadow")
    assert (mode, rule(why)) == ("nested", 5)
    assert "HPT 6e-05 > PTU 2e-05" in why


def test_rule6_low_p_to_t_goes_shadow():
    mode, why = decide([LOW_PT, LOW_PT, LOW_PT, LOW_PT], "nested")
    assert (mode, rule(why)) == ("shadow", 6)
    assert "HPT 1e-05 < PTL 1.5e-05" in why


@pytest.mark.parametrize("current", ["shadow", "nested"])
def test_rule7_history_and_current_disagree(current):
    # History says high (HPT > PTU), now it is low (CPT < PTL): stay.
    mode, why = decide([HIGH_PT, HIGH_PT, HIGH_PT, LOW_PT], current)
    assert (mode, rule(why)) == (current, 7)
    # History low, now high: stay too.
    mode, why = decide([LOW_PT, LOW_PT, LOW_PT, HIGH_PT], current)
    assert (mode, rule(why)) == (current, 7)


@pytest.mark.parametrize("current", ["shadow", "nested"])
def test_rule7_between_the_bounds(current):
    mode, why = decide([MID_PT, MID_PT], current)
    assert (mode, rule(why)) == (current, 7)


def test_first_sample_history_is_current():
    # With no history HTLB = FTLB and HPT = CPT: rules 5 and 6 decide on the current ratio.
    m = DspPolicy(Config()).metrics([sample(*HIGH_PT)])
    assert m["htlb"] == m["ftlb"] == 5.0
    assert m["hpt"] == m["cpt"] == pytest.approx(6e-5)
    mode, why = decide([HIGH_PT], "shadow")
    assert (mode, rule(why)) == ("nested", 5)
    mode, why = decide([LOW_PT], "nested")
    assert (mode, rule(why)) == ("shadow", 6)


def test_hpt_averages_the_previous_history_samples():
    pol = DspPolicy(Config())
    seq = [sample(*HIGH_PT)] * 1 + [sample(*LOW_PT)] * 3 + [sample(*MID_PT)]
    m = pol.metrics(seq)
    assert m["hpt"] == pytest.approx(1e-5)  # the oldest (high) sample is beyond history=3
    assert m["cpt"] == pytest.approx(1.75e-5)
    assert m["htlb"] == 5.0
    # Mean of ratios, periods without TLB misses skipped.
    seq = [sample(*HIGH_PT), sample(0.0, 0.0), sample(*LOW_PT), sample(*MID_PT)]
    assert pol.metrics(seq)["hpt"] == pytest.approx((6e-5 + 1e-5) / 2)
    # history=1: HPT is the previous sample's ratio.
    pol1 = DspPolicy(Config(), history=1)
    assert pol1.metrics([sample(*HIGH_PT), sample(*LOW_PT), sample(*MID_PT)])["hpt"] == \
        pytest.approx(1e-5)


def test_thresholds_are_parameters():
    # TLBU raised to 50: FTLB 20 no longer triggers rule 1 (P-to-T 0 < PTL: rule 6, shadow).
    mode, why = decide([TLB_HEAVY], "nested", tlbu=50.0)
    assert rule(why) == 6
    # PFU raised: the fault-heavy sample no longer triggers rule 2 (rule 5 instead).
    mode, why = decide([FAULT_HEAVY], "shadow", pfu=0.01)
    assert (mode, rule(why)) == ("nested", 5)
    # guard 1.0: FPF 4.5e-4 < PFU now lets rule 1 fire.
    mode, why = decide([(20.0, 4.5e-4)], "nested", guard=1.0)
    assert (mode, rule(why)) == ("shadow", 1)


def test_params_from_config_and_bad_params():
    cfg = Config.from_dict({"selective": {"policy": "dsp",
                                          "policy_params": {"tlbu": 50, "history": 2}}})
    pol = make_policy(cfg.selective.policy, cfg)
    assert isinstance(pol, DspPolicy)
    assert pol.params["tlbu"] == 50.0 and isinstance(pol.params["tlbu"], float)
    assert pol.params["history"] == 2 and pol.params["pfu"] == 5000e-7
    with pytest.raises(ConfigError, match="tlbx"):
        DspPolicy(Config(), tlbx=3)
    with pytest.raises(ConfigError, match="history"):
        DspPolicy(Config(), history=0)
    with pytest.raises(ConfigError, match="tlbu"):
        DspPolicy(Config(), tlbu="high")


def test_defaults_are_table2():
    d = DspPolicy.defaults
    assert (d["pfu"], d["pfl"], d["tlbu"], d["tlbl"], d["ptu"], d["ptl"], d["guard"],
            d["history"]) == (5000e-7, 100e-7, 10.0, 0.1, 200e-7, 150e-7, 0.8, 3)


# ----------------------------------------------------------------------------- periods
# Steady rates of the study's two archetypes on its machine (Table 3, 2.8 GHz, taking one
# instruction per cycle): gcc ~33,000 guest faults/s and 1.08e9 TLB misses in 403 s;
# mcf ~33 M TLB misses/s and 243,491 faults in 383 s.  Per 1,000 instructions:
STUDY_RATES = {"gcc": (0.96, 0.0118), "mcf": (11.8, 2.3e-4)}
STUDY_MODE = {"gcc": "nested", "mcf": "shadow"}  # what the study's dsp chose


def _steady_run(name, period, total, window=None, seed=1):
    """Feed dsp Poisson samples at steady rates; the modes it picks, period by period."""
    import numpy as np

    tlb, pf = STUDY_RATES[name]
    rng = np.random.default_rng(seed)
    cfg = Config().with_overrides({"selective.period_instructions": period})
    pol = DspPolicy(cfg) if window is None else DspPolicy(cfg, window=window)
    samples, mode, modes = [], "nested", []
    for _ in range(int(total // period)):
        samples.append({"instructions": period,
                        "tlb_misses": int(rng.poisson(tlb * period / 1000)),
                        "guest_page_faults": int(rng.poisson(pf * period / 1000))})
        mode, _ = pol.decide(samples, mode)
        modes.append(mode)
    return modes


@pytest.mark.parametrize("name", sorted(STUDY_RATES))
@pytest.mark.parametrize("period", [10**7, 10**8, 10**9, 10**10])
def test_steady_rates_give_the_same_mode_whatever_the_period(name, period):
    modes = _steady_run(name, period, 2e10)
    assert modes[-1] == STUDY_MODE[name]
    # it settles: after the first window it never leaves that mode
    first_window = max(1, int(1e9 // period))
    assert set(modes[first_window:]) == {STUDY_MODE[name]}


def test_per_period_rules_flap_on_short_periods():
    """Why the window: applied to single 10^7-instruction periods (window = period), mcf's
    steady fault rate is 2.3 faults per period, and the rules flap between the modes."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        modes = _steady_run("mcf", 10**7, 1e10, window=10**7)
    flips = sum(a != b for a, b in zip(modes, modes[1:]))
    assert flips > 50


def test_a_window_too_short_for_pfl_is_warned_about():
    import warnings

    cfg = Config().with_overrides({"selective.period_instructions": 10**6})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        pol = DspPolicy(cfg, window=10**6)
    assert pol.warnings and "cannot measure a fault rate at PFL" in pol.warnings[0]
    assert any("PFL" in str(x.message) for x in w)
    assert not DspPolicy(cfg).warnings  # the auto window (10^9) holds 10 faults at PFL
    assert DspPolicy(cfg).window == 10**9
