"""Policy plug-ins are contained: whatever a policy does wrong (raise, exit, return
nonsense, fail to build or to import, change the samples) is a clear error naming it,
never a traceback, a silent exit or a corrupted result."""

from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest

from memvirt.api import simulate
from memvirt.cli import main
from memvirt.config import Config
from memvirt.errors import ConfigError
from memvirt.policy import Policy, PolicyError, make_policy
from memvirt.trace.records import Kind, Trace

PERIOD = 1000


def small_trace(periods: int = 6) -> Trace:
    n = periods * PERIOD // 10
    addr = 0x1000_0000 + (np.arange(n) % 16) * 4096
    return Trace(kind=np.full(n, int(Kind.LOAD), np.uint8), addr=addr.astype(np.uint64),
                 size=np.full(n, 8, np.uint64), pid=np.ones(n, np.int64),
                 icount=np.full(n, 10, np.uint32))


def cfg() -> Config:
    return Config.from_dict({"selective": {"period_instructions": PERIOD}})


BAD = '''
import sys
from memvirt.policy import Policy


class Raises(Policy):
    name = "raises"

    def decide(self, samples, current):
        return {}["no such key"]


class ReturnsNone(Policy):
    def decide(self, samples, current):
        return None


class Exits(Policy):
    name = "exits"

    def decide(self, samples, current):
        sys.exit(0)


class BadInit(Policy):
    name = "bad-init"

    def __init__(self, config=None, **params):
        raise ValueError("cannot start")


class Mutates(Policy):
    name = "mutates"

    def decide(self, samples, current):
        samples[-1]["cycles"] = 0.0
        return current, "changed the record"


class Clears(Policy):
    name = "clears"

    def decide(self, samples, current):
        samples.clear()
        return current, "cleared"


class Duck:
    """Not a Policy subclass: a plain class with decide()."""

    name = "duck"

    def __init__(self, config, **params):
        pass

    def decide(self, samples, current):
        raise RuntimeError("quack")
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    name = f"bad_policies_{os.getpid()}_{abs(hash(str(tmp_path))) % 10**6}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(BAD))
    (tmp_path / f"{name}_syntax.py").write_text("def broken(:\n    pass\n")
    (tmp_path / f"{name}_exits.py").write_text("raise SystemExit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.mark.parametrize("cls, needle", [
    ("Raises", "policy 'raises': decide() failed: KeyError"),
    ("ReturnsNone", "decide() returned None; expected a (mode, reason) pair"),
    ("Exits", "policy 'exits': decide() failed: called sys.exit(0)"),
    ("Mutates", "policy 'mutates': decide() failed: TypeError"),
    ("Clears", "policy 'clears': decide() failed: AttributeError"),
    ("Duck", "policy 'duck': decide() failed: RuntimeError: quack"),
])
def test_a_failing_decide_is_a_policy_error(plugins, cls, needle):
    with pytest.raises(PolicyError) as ei:
        simulate(small_trace(), cfg(), "selective", f"{plugins}:{cls}")
    assert needle in str(ei.value)


def test_the_cli_reports_policy_failures(plugins, capsys):
    for cls in ("Raises", "Exits", "BadInit"):
        argv = ["run", "synth:hot:records=3000", "--mode", "selective", "--quiet",
                "--policy", f"{plugins}:{cls}",
                "--set", f"selective.period_instructions={PERIOD}"]
        assert main(argv) == 2, cls  # SystemExit(0) inside decide used to exit 0, silently
        err = capsys.readouterr().err
        assert err.startswith("memvirt: error: policy") and "Traceback" not in err


def test_constructor_and_import_errors_name_the_policy(plugins):
    with pytest.raises(PolicyError, match="policy 'bad-init': creating it failed: "
                                          "ValueError: cannot start"):
        make_policy(f"{plugins}:BadInit", cfg())
    with pytest.raises(ConfigError, match=r"SyntaxError: .*_syntax\.py, line 1"):
        make_policy(f"{plugins}_syntax:X", cfg())
    with pytest.raises(ConfigError, match=r"importing module .* failed: called sys.exit"):
        make_policy(f"{plugins}_exits:X", cfg())


def test_samples_are_read_only_and_the_result_is_intact():
    seen = []

    class Peek(Policy):
        name = "peek"

        def decide(self, samples, current):
            s = samples[-1]
            seen.append((len(samples), s["cycles"], tuple(s["counters"][:3])))
            with pytest.raises(TypeError):
                s["counters"][0] = 5  # a tuple
            with pytest.raises(TypeError):
                s["cycles_breakdown"]["base"] = 0.0
            assert [x["index"] for x in samples[-3:]] == list(range(len(samples)))[-3:]
            return current, "looked"

    res = simulate(small_trace(), cfg(), "selective", Peek(cfg()))
    ref = simulate(small_trace(), cfg(), "selective", "static")
    assert res.cycles == ref.cycles
    assert [s["cycles"] for s in res.samples] == [s["cycles"] for s in ref.samples]
    assert [n for n, _, _ in seen] == list(range(1, len(seen) + 1))
    assert isinstance(res.samples[0]["counters"], list)  # the record itself is untouched


def test_non_finite_policy_parameters_are_refused():
    with pytest.raises(ConfigError, match="selective.policy_params.horizon.*finite"):
        make_policy("cost", cfg(), params={"horizon": float("inf")})


def test_oracle_goes_through_its_own_entry_point():
    from memvirt.policy.oracle import simulate_with_oracle

    with pytest.raises(ConfigError, match="oracle_run"):  # api.simulate cannot see ahead
        simulate(small_trace(), cfg(), "selective", "oracle")
    res = simulate_with_oracle(small_trace(), cfg(), "selective", "oracle")
    assert res.selective["is_bound"] and "oracle_bound" in res.selective
