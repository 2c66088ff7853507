"""Capture: the one-vCPU scheduler on hand-written logs, and a real Valgrind capture."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from memvirt.cli import main
from memvirt.errors import TraceError
from memvirt.trace.base import load_trace
from memvirt.trace.capture import merge_lackey_logs
from memvirt.trace.records import Kind

IF, L, S, FORK, EXIT, SWITCH, EXEC = (Kind.IFETCH, Kind.LOAD, Kind.STORE, Kind.FORK, Kind.EXIT,
                                     Kind.SWITCH, Kind.EXEC)

PARENT = """\
==100== Lackey, an example Valgrind tool
I  00001000,4
 L 00005000,8
I  00001004,4
I  00001008,4
SYSCALL[100,1](56) sys_clone ( 1200011, 0x0, 0x0, 0x4a27a10, 0x0 )   clone(fork): process 100 created child 101
 --> [pre-success] Success(0x65)
I  0000100c,4
I  00001010,4
SYSCALL[100,1](61) sys_wait4 ( 101, 0x1fff00066c, 0, 0x0 ) --> [async] ...
SYSCALL[100,1](61) ... [async] --> Success(0x65)
I  00001014,4
 S 00006000,8
SYSCALL[100,1](231) exit_group( 0 ) --> [pre-success] Success(0x0)
==100==
==100== Exit code:       0
"""

CHILD = """\
==101== Lackey, an example Valgrind tool
 --> [pre-success] Success(0x0)
I  00002000,4
I  00002004,4
I  00002008,4
 S 00007000,8
I  0000200c,4
I  00002010,4
SYSCALL[101,1](231) exit_group( 0 ) --> [pre-success] Success(0x0)
"""


def timeline(t):
    return [(Kind(k), int(a), int(p)) for k, a, p in zip(t.kind, t.addr, t.pid)]


def valgrind_spacing(text: str) -> str:
    """Valgrind ends syscall lines and banners with a space (stripped from the literals)."""
    return "\n".join(ln + " " if ln.startswith(("SYSCALL", " -->", "==")) else ln
                     for ln in text.split("\n"))


def write_logs(tmp_path, parent=PARENT, child=CHILD):
    (tmp_path / "p.log").write_text(valgrind_spacing(parent))
    (tmp_path / "c.log").write_text(valgrind_spacing(child))
    return {100: [tmp_path / "p.log"], 101: [tmp_path / "c.log"]}


def test_round_robin_and_wait(tmp_path):
    t = merge_lackey_logs(write_logs(tmp_path), 100, slice_instructions=3)
    assert timeline(t) == [
        (IF, 0x1000, 100), (L, 0x5000, 100), (IF, 0x1004, 100), (IF, 0x1008, 100),
        (FORK, 101, 100),
        (SWITCH, 0, 101),  # the parent's slice of 3 instructions is over
        (IF, 0x2000, 101), (IF, 0x2004, 101), (IF, 0x2008, 101), (S, 0x7000, 101),
        (SWITCH, 0, 100),
        (IF, 0x100C, 100), (IF, 0x1010, 100),  # then wait4(101): blocks
        (SWITCH, 0, 101),
        (IF, 0x200C, 101), (IF, 0x2010, 101), (EXIT, 0, 101),
        (SWITCH, 0, 100),
        (IF, 0x1014, 100), (S, 0x6000, 100), (EXIT, 0, 100),
    ]
    np.testing.assert_array_equal(t.icount, (t.kind == IF).astype(np.uint32))


def test_long_slice_parent_runs_until_it_waits(tmp_path):
    t = merge_lackey_logs(write_logs(tmp_path), 100)
    assert [k for k, _, _ in timeline(t)] == [
        IF, L, IF, IF, FORK, IF, IF, SWITCH, IF, IF, IF, S, IF, IF, EXIT, SWITCH, IF, S, EXIT]


def test_child_that_already_exited_is_reaped_without_blocking(tmp_path):
    child = ("==101== x\n --> [pre-success] Success(0x0) \nI  00002000,4\n"
             "SYSCALL[101,1](231) exit_group( 0 ) --> [pre-success] Success(0x0) \n")
    t = merge_lackey_logs(write_logs(tmp_path, child=child), 100, slice_instructions=3)
    assert timeline(t) == [
        (IF, 0x1000, 100), (L, 0x5000, 100), (IF, 0x1004, 100), (IF, 0x1008, 100),
        (FORK, 101, 100),
        (SWITCH, 0, 101), (IF, 0x2000, 101), (EXIT, 0, 101),
        (SWITCH, 0, 100), (IF, 0x100C, 100), (IF, 0x1010, 100), (IF, 0x1014, 100),
        (S, 0x6000, 100), (EXIT, 0, 100),
    ]


def test_exec_continues_in_the_next_log_and_missing_exit_is_added(tmp_path):
    (tmp_path / "a").write_text(
        "==7== Command: sh\nI  00001000,2\n"
        "SYSCALL[7,1](59) sys_execve ( 0x10a004(/bin/true), 0x1fff0005f0, 0x1fff000798 )\n")
    (tmp_path / "b").write_text("==7== Command: /bin/true\nI  00009000,2\n L 00009100,4\n")
    t = merge_lackey_logs({7: [tmp_path / "a", tmp_path / "b"]}, 7)
    assert timeline(t) == [(IF, 0x1000, 7), (EXEC, 0, 7), (IF, 0x9000, 7), (L, 0x9100, 7),
                           (EXIT, 0, 7)]


def test_malformed_log_line_is_reported(tmp_path):
    (tmp_path / "p.log").write_text("I  00001000,2\nI  0000zz00,2\n")
    with pytest.raises(TraceError, match=r"p\.log:2: malformed Lackey line"):
        merge_lackey_logs({5: [tmp_path / "p.log"]}, 5)


def test_missing_valgrind(monkeypatch, tmp_path, capsys):
    import memvirt.trace.capture as cap

    monkeypatch.setattr(cap.shutil, "which", lambda name: None)
    with pytest.raises(TraceError, match=r"apt-get install valgrind"):
        cap.capture(["true"], tmp_path / "x.parquet")
    assert main(["capture", "-o", str(tmp_path / "x.parquet"), "--", "true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apt-get install valgrind" in err[0]
    assert not (tmp_path / "x.parquet").exists()


# ------------------------------------------------------------------------------------------
# a real capture

N_PAGES, TOUCH, M_PAGES, K_TOUCH = 37, 29, 23, 17
PAGE = 4096

PROGRAM = r"""
#define _GNU_SOURCE
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#define PG 4096
int main(void) {
    volatile char *a = mmap(0, N * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) return 10;
    for (int i = 0; i < T; i++) a[i * PG + 8] = 1;
    if (munmap((void *)a, N * PG)) return 11;
    pid_t c = fork();
    if (c < 0) return 12;
    if (c == 0) {
        volatile char *b = mmap(0, M * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (b == MAP_FAILED) _exit(20);
        for (int i = 0; i < K; i++) b[i * PG + 16] = 2;
        _exit(0);
    }
    int st;
    if (waitpid(c, &st, 0) != c) return 13;
    return WEXITSTATUS(st);
}
"""

needs_valgrind = pytest.mark.skipif(
    shutil.which("valgrind") is None or shutil.which("gcc") is None,
    reason="needs valgrind and gcc (apt-get install valgrind gcc)")


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    d = tmp_path_factory.mktemp("prog")
    (d / "touch.c").write_text(PROGRAM)
    subprocess.run(["gcc", "-O1", f"-DN={N_PAGES}", f"-DT={TOUCH}", f"-DM={M_PAGES}",
                    f"-DK={K_TOUCH}", "-o", str(d / "touch"), str(d / "touch.c")], check=True)
    return d / "touch"


def _touched_pages(t, pid, lo, hi, idx_lo=0, idx_hi=None):
    sel = np.zeros(len(t), bool)
    sel[idx_lo:idx_hi] = True
    sel &= (t.pid == pid) & np.isin(t.kind, [S, Kind.MODIFY]) & (t.addr >= lo) & (t.addr < hi)
    return len(np.unique(t.addr[sel] >> np.uint64(12)))


@pytest.mark.valgrind
@needs_valgrind
def test_capture_fork_mmap_program(program, tmp_path):
    out = tmp_path / "cap.parquet"
    assert main(["capture", "--quiet", "-o", str(out), "--", str(program)]) == 0
    t = load_trace(out)
    parent = int(t.pid[0])
    ev = [(i, Kind(k), int(a), int(s), int(p)) for i, (k, a, s, p) in
          enumerate(zip(t.kind, t.addr, t.size, t.pid)) if k >= Kind.MMAP]

    mm = [e for e in ev if e[1] == Kind.MMAP and e[3] == N_PAGES * PAGE and e[4] == parent]
    assert len(mm) == 1
    i_mmap, _, a_lo, _, _ = mm[0]
    un = [e for e in ev if e[1] == Kind.MUNMAP and e[2] == a_lo and e[3] == N_PAGES * PAGE]
    assert len(un) == 1 and un[0][4] == parent
    i_munmap = un[0][0]
    forks = [e for e in ev if e[1] == Kind.FORK]
    assert len(forks) == 1 and forks[0][4] == parent
    i_fork, child = forks[0][0], forks[0][2]
    cm = [e for e in ev if e[1] == Kind.MMAP and e[3] == M_PAGES * PAGE and e[4] == child]
    assert len(cm) == 1
    i_cmmap, b_lo = cm[0][0], cm[0][2]
    exits = [e for e in ev if e[1] == Kind.EXIT]
    assert [e[4] for e in exits] == [child, parent]
    i_cexit, i_pexit = exits[0][0], exits[1][0]
    assert i_mmap < i_munmap < i_fork < i_cmmap < i_cexit < i_pexit == len(t) - 1

    # the pages each process touched in its region, between the region's map and unmap
    assert _touched_pages(t, parent, a_lo, a_lo + N_PAGES * PAGE, i_mmap, i_munmap) == TOUCH
    assert _touched_pages(t, parent, a_lo, a_lo + N_PAGES * PAGE) == TOUCH
    assert _touched_pages(t, child, b_lo, b_lo + M_PAGES * PAGE, i_cmmap) == K_TOUCH

    # the child's records lie between its creation and its exit, announced by a SWITCH
    child_idx = np.flatnonzero(t.pid == child)
    assert child_idx[0] > i_fork and child_idx[-1] == i_cexit
    first = child_idx[0]
    assert t.kind[first] == SWITCH
    assert set(np.unique(t.pid).tolist()) == {parent, child}
    sw = np.flatnonzero(t.kind == SWITCH)
    assert all(t.pid[i] != t.pid[i - 1] for i in sw)

    meta = t.meta
    assert meta["source"] == "capture" and str(program) in meta["command"]
    assert meta["tools"]["valgrind"].startswith("valgrind-")
    assert meta["processes"] == 2 and meta["exit_status"] == 0
    assert meta["counts"]["FORK"] == 1 and meta["instructions"] == t.instructions


@pytest.mark.valgrind
@needs_valgrind
def test_capture_reports_failing_command(tmp_path, capsys):
    out = tmp_path / "fail.parquet"
    rc = main(["capture", "--quiet", "-o", str(out), "--", "sh", "-c",
               "echo something went wrong; exit 3"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "status 3" in err and "something went wrong" in err and "Traceback" not in err
    assert not out.exists()
