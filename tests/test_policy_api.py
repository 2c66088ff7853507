"""The policy API: registry, ``module:Class`` loading, parameters and their errors."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from memvirt.api import simulate
from memvirt.config import Config
from memvirt.errors import ConfigError
from memvirt.policy import Policy, make_policy, policies, register_policy
from memvirt.policy.cost import CostPolicy
from memvirt.policy.dsp import DspPolicy
from memvirt.policy.oracle import OraclePolicy
from memvirt.policy.static import StaticPolicy
from memvirt.trace.records import Kind, Trace

USER_POLICY = '''
from memvirt.policy import Policy


class Flip(Policy):
    """Switch every `every` periods."""

    name = "flip"
    defaults = {"every": 1}

    def decide(self, samples, current):
        if len(samples) % self.params["every"] == 0:
            other = "shadow" if current == "nested" else "nested"
            return other, f"flip after {len(samples)} periods"
        return current, "keep"


NOT_A_POLICY = 42
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"user_policy_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_POLICY))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def small_trace(periods: float = 4, per: int = 1000) -> Trace:
    """Loads over 16 pages, ``per`` instructions per period (icount 10 per record)."""
    n = int(periods * per) // 10
    addr = 0x1000_0000 + (np.arange(n) % 16) * 4096
    return Trace(kind=np.full(n, int(Kind.LOAD), np.uint8), addr=addr.astype(np.uint64),
                 size=np.full(n, 8, np.uint64), pid=np.ones(n, np.int64),
                 icount=np.full(n, 10, np.uint32))


def test_builtin_registry():
    known = policies()
    assert {"static", "dsp", "cost", "oracle"} <= set(known)
    assert known["dsp"] is DspPolicy and known["cost"] is CostPolicy
    assert known["static"] is StaticPolicy and known["oracle"] is OraclePolicy
    assert OraclePolicy.is_bound and not DspPolicy.is_bound and not CostPolicy.is_bound
    assert isinstance(make_policy("static", Config()), StaticPolicy)
    # The default config's policy is a registered one.
    assert isinstance(make_policy(Config().selective.policy, Config()), Policy)


def test_unknown_policy_lists_known():
    with pytest.raises(ConfigError) as e:
        make_policy("dps", Config())
    msg = str(e.value)
    assert "dps" in msg and all(n in msg for n in ("static", "dsp", "cost", "oracle"))


def test_unknown_and_bad_params_name_the_key():
    cfg = Config.from_dict({"selective": {"policy_params": {"horizn": 3}}})
    with pytest.raises(ConfigError, match="horizn"):
        make_policy("cost", cfg)
    with pytest.raises(ConfigError, match="horizon"):
        make_policy("cost", Config(), params={"horizon": "long"})
    with pytest.raises(ConfigError, match="mode"):
        make_policy("static", Config(), params={"mode": "native"})
    with pytest.raises(ConfigError, match="schedule"):
        make_policy("oracle", Config())
    with pytest.raises(ConfigError, match="schedule"):
        make_policy("oracle", Config(), params={"schedule": ["shadow", "hap"]})


def test_params_from_config_override_defaults():
    cfg = Config().with_overrides(["selective.policy_params.horizon=5"])
    pol = make_policy("cost", cfg)
    assert pol.params == {"horizon": 5.0, "adaptive": True}
    # explicit params win over the config's
    assert make_policy("cost", cfg, params={"horizon": 7}).params["horizon"] == 7.0


def test_module_class_loading(user_module):
    cfg = Config.from_dict({"selective": {"policy": f"{user_module}:Flip",
                                          "policy_params": {"every": 2}}})
    pol = make_policy(cfg.selective.policy, cfg)
    assert type(pol).__name__ == "Flip" and pol.params["every"] == 2
    assert pol.decide([{}, {}], "nested") == ("shadow", "flip after 2 periods")
    assert pol.decide([{}], "nested") == ("nested", "keep")
    with pytest.raises(ConfigError, match="evry"):
        make_policy(f"{user_module}:Flip", Config(), params={"evry": 1})


def test_module_class_errors(user_module):
    with pytest.raises(ConfigError, match="cannot import"):
        make_policy("no_such_module_xyz:Flip", Config())
    with pytest.raises(ConfigError, match="has no 'Flop'"):
        make_policy(f"{user_module}:Flop", Config())
    with pytest.raises(ConfigError, match="not a policy class"):
        make_policy(f"{user_module}:NOT_A_POLICY", Config())
    with pytest.raises(ConfigError, match="module:Class"):
        make_policy(":Flip", Config())


def test_register_and_instances():
    class Always(Policy):
        name = "always-shadow-test"

        def decide(self, samples, current):
            return "shadow", "always"

    register_policy("always-shadow-test", Always)
    try:
        assert isinstance(make_policy("always-shadow-test", Config()), Always)
        inst = Always(Config())
        assert make_policy(inst, Config()) is inst
        assert isinstance(make_policy(Always, Config()), Always)
    finally:
        from memvirt import policy as P

        P._POLICIES.pop("always-shadow-test", None)
    with pytest.raises(ValueError):
        register_policy("a:b", Always)
    with pytest.raises(TypeError):
        register_policy("x", object)


def test_helpers_price_events():
    cfg = Config()
    pol = StaticPolicy(cfg)
    assert pol.exit_cycles("pf_hidden") == cfg.cost.vm_exit + cfg.cost.hv_pf_hidden
    assert pol.unit("mode_switch") == cfg.cost.mode_switch
    s = {"instructions": 2000, "tlb_misses": 30, "guest_page_faults": 1}
    assert pol.rates(s) == (15.0, 0.5)
    assert pol.rates({"instructions": 0, "tlb_misses": 0, "guest_page_faults": 0}) == (0, 0)


def test_user_policy_end_to_end(user_module):
    """A module:Class policy drives a real selective run; its decisions are recorded."""
    cfg = Config.from_dict({"selective": {"period_instructions": 1000,
                                          "policy": f"{user_module}:Flip"}})
    res = simulate(small_trace(periods=4.5), cfg, "selective")  # 4 full periods + a half
    sel = res.selective
    assert res.policy == "flip" and sel["policy"] == "flip" and sel["is_bound"] is False
    assert [d["to"] for d in sel["decisions"]] == ["shadow", "nested", "shadow", "nested"]
    assert sel["switches"] == 4 == res.counter("mode_switches")
    assert [s["mode"] for s in res.samples] == ["nested", "shadow", "nested", "shadow", "nested"]
    assert [s["instructions"] for s in res.samples] == [1000] * 4 + [500]
    assert all(d["reason"].startswith("flip after") for d in sel["decisions"])


def test_policy_returning_a_bad_mode_is_an_error():
    class Native(Policy):
        name = "native-test"

        def decide(self, samples, current):
            return "native", "bad"

    cfg = Config.from_dict({"selective": {"period_instructions": 1000}})
    with pytest.raises(ConfigError, match="native"):
        simulate(small_trace(periods=2), cfg, "selective", Native(cfg))
