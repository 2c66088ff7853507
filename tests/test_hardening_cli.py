"""The command line under bad input and signals: config values that cannot be simulated,
files that are not what they should be, options that do not apply, outputs checked
before the work, workers stopped on SIGTERM / SIGINT, no code run from the current
directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from memvirt.cli import main

REPO = Path(__file__).resolve().parent.parent
HOT = "synth:hot:records=3000"


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------------- 12 and 14: config


@pytest.mark.parametrize("override, needles", [
    ("cost.vm_exit=inf", ["cost.vm_exit", "finite"]),
    ("cost.vm_exit=nan", ["cost.vm_exit", "finite"]),
    ("cost.clock_ghz=inf", ["cost.clock_ghz", "finite"]),
    ("selective.period_instructions=9223372036854775808",
     ["selective.period_instructions", "4611686018427387904"]),
    ("hw.stlb.entries=68719476736", ["hw.stlb.entries", "16777216"]),
    ("hw.stlb.ways=128", ["hw.stlb.ways", "64"]),
    ("hw.l2.entries=68719476736", ["hw.l2.entries", "16777216"]),
    ("vmm.oos_pages=100000000000", ["vmm.oos_pages"]),
])
def test_config_values_that_cannot_be_simulated(override, needles, capsys):
    assert main(["run", HOT, "--quiet", "--set", override]) == 2
    err = _err(capsys)
    for n in needles:
        assert n in err, (n, err)


def test_config_files_that_are_not_text_or_not_files(tmp_path, capsys):
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"[cost]\nvm_exit = 1\n# \xff\xfe\n")
    assert main(["run", HOT, "--quiet", "--config", str(bad)]) == 2
    assert "bin.toml" in (e := _err(capsys)) and "UTF-8" in e
    assert main(["run", HOT, "--quiet", "--config", str(tmp_path)]) == 2
    assert "is a folder" in _err(capsys)


# ---------------------------------------------------------------------- 19: options


def test_policy_without_selective_mode_is_an_error(capsys):
    assert main(["run", HOT, "--quiet", "--policy", "cost"]) == 2
    assert "--mode selective" in _err(capsys)
    assert main(["run", HOT, "--quiet", "--mode", "selective", "--policy", "dps"]) == 2
    assert "unknown policy 'dps'" in _err(capsys)


# ---------------------------------------------------------------------- 10: outputs first


def test_calibrate_and_experiment_check_outputs_first(tmp_path, monkeypatch, capsys):
    def boom(*a, **kw):
        raise AssertionError("measured before checking the output path")

    monkeypatch.setattr("memvirt.experiments.calibrate.measure", boom)
    monkeypatch.setattr("memvirt.experiments.vee11.run", boom)
    assert main(["calibrate", "--json", str(tmp_path / "no" / "c.json")]) == 2
    assert "does not exist" in _err(capsys)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["experiment", "vee11", "--quick", "--out", str(afile)]) == 2
    assert "is a file" in _err(capsys)


# ---------------------------------------------------------------------- 9: signals

SLEEPY = '''
import os
import pathlib
import time

from memvirt.policy import Policy


class Sleep(Policy):
    """A slow policy: each run takes tens of seconds."""

    name = "sleepy"

    def decide(self, samples, current):
        if len(samples) == 1:
            pathlib.Path(os.environ["SLEEPY_DIR"], f"started-{os.getpid()}").write_text("")
        time.sleep(0.2)
        return current, "zzz"
'''


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_compare_stops_its_workers_on_a_signal(tmp_path, sig):
    (tmp_path / "sleepy.py").write_text(SLEEPY)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO / 'src'}",
           "SLEEPY_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "memvirt", "compare", "synth:hot:records=50000",
           "synth:hot:records=50001", "--modes", "selective", "--policy", "sleepy:Sleep",
           "--workers", "2", "--quiet", "--set", "selective.period_instructions=1000"]
    # (files, not pipes: orphaned workers would keep a pipe open and block the reader)
    errfile = tmp_path / "stderr.txt"
    with open(errfile, "w") as err:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("started-*"))) < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the runs did not start: {errfile.read_text()}")
            time.sleep(0.1)
        workers = [int(p.name.split("-")[1]) for p in tmp_path.glob("started-*")]
        assert all(_alive(w) for w in workers)
        proc.send_signal(sig)  # to the parent only, not to its process group
        try:
            proc.wait(timeout=20)  # the runs in flight would take half a minute more
        except subprocess.TimeoutExpired:
            pytest.fail(f"memvirt compare did not stop promptly on {sig.name}")
        assert proc.returncode != 0
        assert "Traceback" not in errfile.read_text()
        t0 = time.monotonic()
        while any(_alive(w) for w in workers) and time.monotonic() - t0 < 5:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "worker processes left running"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        for p in tmp_path.glob("started-*"):
            try:
                os.kill(int(p.name.split("-")[1]), signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------------- 18: the current directory

CWD_POLICY = '''
from memvirt.policy import Policy


class P(Policy):
    name = "from-cwd"

    def decide(self, samples, current):
        return current, "stay"
'''


def test_python_m_memvirt_does_not_import_from_the_current_directory(tmp_path):
    (tmp_path / "cwdpol.py").write_text(CWD_POLICY)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "-m", "memvirt", "run", HOT, "--mode", "selective", "--quiet",
           "--policy", "cwdpol:P", "--set", "selective.period_instructions=1000"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "cannot import module 'cwdpol'" in r.stderr, r.stderr
    # on purpose, through PYTHONPATH, it works
    r = subprocess.run(cmd, cwd=tmp_path, env={**env, "PYTHONPATH": str(tmp_path)},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
