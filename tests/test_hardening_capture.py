"""Hardening: ``memvirt capture`` stopped by SIGTERM cleans up.

It exits 130 with one line on stderr, leaves no trace file (nor its temporary ``.NAME.PID.tmp``)
and no temporary capture folder, and kills Valgrind's whole process group: no traced process
(the command and the children it forked, each under its own Valgrind) outlives it.  Before,
SIGTERM killed memvirt alone: the Valgrind processes ran on, orphaned, and the temporary
trace file and folder stayed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

MEMVIRT = str(Path(sys.executable).with_name("memvirt"))


def processes_mentioning(marker: str) -> list[int]:
    """Pids of the live processes whose command line contains ``marker`` (Valgrind's
    arguments name the capture's temporary folder)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes()
            state = (d / "stat").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and state[state.rfind(b")") + 2:][:1] not in b"ZX":
            out.append(int(d.name))
    return out


@pytest.mark.valgrind
@pytest.mark.parametrize("backend", ["mvtrace", "lackey"])
def test_sigterm_during_capture_leaves_no_trace_and_no_valgrind(tmp_path, programs, backend):
    tmpdir = (tmp_path / "tmp").resolve()
    tmpdir.mkdir()
    out = tmp_path / "out.parquet"
    prog = programs / "mv_single"
    # a shell that forks one long-running child and execs another: two traced processes
    cmd = [MEMVIRT, "capture", "--quiet", "--backend", backend, "-o", str(out), "--",
           "/bin/sh", "-c", f"{prog} 100000000 & exec {prog} 100000000"]
    p = subprocess.Popen(cmd, env=dict(os.environ, TMPDIR=str(tmpdir)),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        started = False  # (counted once both run: an exec briefly hides one on a loaded machine)
        while time.time() < deadline and p.poll() is None:
            streams = list(tmpdir.glob("memvirt-capture-*/streams/*"))
            if len(processes_mentioning(str(tmpdir))) >= 2 and len(streams) >= 2:
                started = True
                break
            time.sleep(0.05)
        assert p.poll() is None, p.stderr.read().decode()
        assert started, "valgrind did not start both"
        time.sleep(1.0)  # converting and writing records
        assert list(tmp_path.glob(".out.parquet.*.tmp")), "the trace writer did not start"
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=30)
        err = p.stderr.read().decode()
        assert rc == 130, (rc, err)
        assert "Traceback" not in err and err.strip() == "memvirt: interrupted", err
        assert not out.exists()
        assert list(tmp_path.glob(".out.parquet*")) == []
        assert list(tmpdir.iterdir()) == []  # the capture folder is gone
        left = processes_mentioning(str(tmpdir))
        for _ in range(50):  # (SIGKILLed processes vanish once their parent reaps them)
            if not left:
                break
            time.sleep(0.1)
            left = processes_mentioning(str(tmpdir))
        assert left == [], "orphaned valgrind processes"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for pid in processes_mentioning(str(tmpdir)):  # (only when the test failed)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
