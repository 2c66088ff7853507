"""The Valgrind Lackey reader: access lines, syscall events, streaming, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memvirt.errors import TraceError
from memvirt.trace.base import load_trace, open_trace
from memvirt.trace.lackey import LackeySource, parse_lackey_text, read_lackey
from memvirt.trace.records import Kind, Trace

ROOT = Path(__file__).resolve().parents[1]
TRANS = ROOT / "tests" / "data" / "cachelab" / "trans.trace"

_LETTER = {"I": Kind.IFETCH, "L": Kind.LOAD, "S": Kind.STORE, "M": Kind.MODIFY}


def reference_parse(text: str):
    """Independent, plain-Python reading of Lackey access lines."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("=="):
            continue
        letter, rest = line.split(None, 1)
        addr, size = rest.strip().split(",")
        out.append((int(_LETTER[letter]), int(addr, 16), int(size)))
    return out


def test_trans_trace_counts():
    text = TRANS.read_text()
    lines = text.splitlines()
    n_i = sum(1 for ln in lines if ln.startswith("I "))
    n_l = sum(1 for ln in lines if ln.startswith(" L "))
    n_s = sum(1 for ln in lines if ln.startswith(" S "))
    n_m = sum(1 for ln in lines if ln.startswith(" M "))
    # the same counts, stated: 596 lines in the CS:APP cache-lab trace
    assert (n_i, n_l, n_s, n_m) == (378, 156, 42, 20)
    t = load_trace(TRANS)
    assert isinstance(open_trace(TRANS), LackeySource)
    assert len(t) == 596 == len(lines)
    counts = np.bincount(t.kind, minlength=4)
    assert counts.tolist() == [n_i, n_l, n_s, n_m]
    assert t.instructions == 378
    assert (t.pid == 1).all()
    np.testing.assert_array_equal(t.icount, (t.kind == Kind.IFETCH).astype(np.uint32))
    ref = reference_parse(text)
    np.testing.assert_array_equal(t.kind, [r[0] for r in ref])
    np.testing.assert_array_equal(t.addr, np.array([r[1] for r in ref], dtype=np.uint64))
    np.testing.assert_array_equal(t.size, np.array([r[2] for r in ref], dtype=np.uint64))
    assert t.addr[0] == 0x00600AA0 and t.size[0] == 1 and t.kind[0] == Kind.STORE


def test_streaming_blocks_equal_whole(tmp_path):
    whole = load_trace(TRANS)
    for block in (7, 64, 1000):
        src = LackeySource(TRANS, block_bytes=block)
        chunks = list(src.chunks(50))
        assert all(len(c) == 50 for c in chunks[:-1])
        assert Trace.concat(chunks).equals(whole)
        assert src.progress() == (TRANS.stat().st_size, TRANS.stat().st_size)


def test_pid_default_given_and_banner(tmp_path):
    body = "I  0040051e,1\n S ff000390,4\n"
    assert (parse_lackey_text(body).pid == 1).all()
    assert (parse_lackey_text(body, pid=42).pid == 42).all()
    t = parse_lackey_text("==4242== Lackey, an example Valgrind tool\n==4242== \n" + body)
    assert (t.pid == 4242).all() and len(t) == 2
    f = tmp_path / "p.lackey"
    f.write_text(body)
    assert (load_trace(read_lackey(f, pid=9)).pid == 9).all()


def test_last_line_without_newline_and_blank_lines():
    t = parse_lackey_text("I  00400000,3\n\n M 7ff0,8")
    assert t.kind.tolist() == [Kind.IFETCH, Kind.MODIFY]
    assert t.addr.tolist() == [0x400000, 0x7FF0]
    assert t.size.tolist() == [3, 8]


# Real Valgrind 3.19 output shapes (--trace-syscalls=yes)
SYSCALL_LOG = """\
==2965== Lackey, an example Valgrind tool
==2965== Command: ./t
==2965==
SYSCALL[2965,1](12) sys_brk ( 0x0 ) --> [pre-success] Success(0x4035000)
I  04001000,4
SYSCALL[2965,1](257) sys_openat ( 4294967196, 0x4034bb0(/usr/lib/x.so), 524288 ) --> [async] ...
SYSCALL[2965,1](257) ... [async] --> Success(0x4)
SYSCALL[2965,1](9) sys_mmap ( 0x0, 12288, 3, 34, 4294967295, 0 ) --> [pre-success] Success(0x483c000)
 S 0483c008,8
SYSCALL[2965,1](9) sys_mmap ( 0x0, 99999, 3, 34, 4294967295, 0 ) --> [pre-fail] Failure(0xc)
SYSCALL[2965,1](334) unimplemented (by the kernel) syscall: 334! (ni_syscall)
 --> [pre-fail] Failure(0x26)
SYSCALL[2965,1](25) sys_mremap ( 0x483c000, 12288, 32768, 0x1 ) --> [pre-success] Success(0x483c000)
SYSCALL[2965,1](25) sys_mremap ( 0x483c000, 32768, 8192, 0x1 ) --> [pre-success] Success(0x483c000)
SYSCALL[2965,1](25) sys_mremap ( 0x483c000, 8192, 65536, 0x1 ) --> [pre-success] Success(0x5000000)
SYSCALL[2965,1](11) sys_munmap ( 0x5000000, 65536 )[sync] --> Success(0x0)
SYSCALL[2965,1](12) sys_brk ( 0x4037000 ) --> [pre-success] Success(0x4037000)
SYSCALL[2965,1](56) sys_clone ( 3d0f00, 0x5229f70, 0x522a990, 0x522a990, 0x522a6c0 ) --> [pre-success] Success(0xdff)
SYSCALL[2965,2](60) exit( 0 ) --> [pre-success] Success(0x0)
I  04001004,4
SYSCALL[2965,1](56) sys_clone ( 1200011, 0x0, 0x0, 0x4a27a10, 0x0 )   clone(fork): process 2965 created child 2966
 --> [pre-success] Success(0xb96)
SYSCALL[2965,1](58) sys_fork ( )   fork: process 2965 created child 2967
 --> [pre-success] Success(0xb97)
SYSCALL[2965,1](61) sys_wait4 ( 4294967295, 0x1fff000664, 0, 0x0 ) --> [async] ...
SYSCALL[2965,1](61) ... [async] --> Success(0xb96)
 L 04002000,8
SYSCALL[2965,1](59) sys_execve ( 0x10a004(/bin/true), 0x1fff0005f0, 0x1fff000798 ) --> [pre-fail] Failure(0x2)
SYSCALL[2965,1](231) exit_group( 0 ) --> [pre-success] Success(0x0)
==2965==
==2965== Exit code:       0
"""


def valgrind_spacing(text: str) -> str:
    """Valgrind ends syscall lines and banners with a space (stripped from the literals)."""
    return "\n".join(ln + " " if ln.startswith(("SYSCALL", " -->", "==")) else ln
                     for ln in text.split("\n"))


@pytest.mark.parametrize("spacing", [False, True])
def test_syscall_events(spacing):
    t = parse_lackey_text(valgrind_spacing(SYSCALL_LOG) if spacing else SYSCALL_LOG)
    got = [(Kind(k).name, int(a), int(s)) for k, a, s in zip(t.kind, t.addr, t.size)]
    assert got == [
        ("BRK", 0x4035000, 0),
        ("IFETCH", 0x4001000, 4),
        ("MMAP", 0x483C000, 12288),
        ("STORE", 0x483C008, 8),
        # mremap grown in place, shrunk in place, moved
        ("MMAP", 0x483C000 + 12288, 32768 - 12288),
        ("MUNMAP", 0x483C000 + 8192, 32768 - 8192),
        ("MUNMAP", 0x483C000, 8192),
        ("MMAP", 0x5000000, 65536),
        ("MUNMAP", 0x5000000, 65536),
        ("BRK", 0x4037000, 0),
        # the CLONE_THREAD clone and that thread's exit give nothing
        ("IFETCH", 0x4001004, 4),
        ("FORK", 0xB96, 0),
        ("FORK", 0xB97, 0),
        ("LOAD", 0x4002000, 8),
        # the failed execve gives nothing
        ("EXIT", 0, 0),
    ]
    assert (t.pid == 2965).all()
    assert t.instructions == 2


def test_exec_without_result_at_end_of_log():
    log = ("==7== Command: ./a\n"
           " --> [pre-success] Success(0x0) \n"  # a forked child's first line
           "I  00001000,2\n"
           "SYSCALL[7,1](59) sys_execve ( 0x10a004(/bin/true), 0x1fff0005f0, 0x1fff000798 )")
    t = parse_lackey_text(log)
    assert [Kind(k).name for k in t.kind] == ["IFETCH", "EXEC"]
    # the same, with the new image's banner following in one stream
    t = parse_lackey_text(log + "\n==7== Lackey, an example Valgrind tool\nI  00002000,2\n")
    assert [Kind(k).name for k in t.kind] == ["IFETCH", "EXEC", "IFETCH"]


def test_killed_by_signal_banner_is_exit():
    t = parse_lackey_text("I  00001000,2\n==9== Process terminating with default action of "
                          "signal 11 (SIGSEGV)\n==9==  Access not within mapped region\n")
    assert [Kind(k).name for k in t.kind] == ["IFETCH", "EXIT"]
    assert t.pid.tolist() == [1, 9]


@pytest.mark.parametrize("bad, why", [
    ("I  zz12,4", "malformed"),
    (" L 0040,", "malformed"),
    (" X 0040,4", "malformed"),
    (" L 00400000000000000000,4", "at most 16"),
    ("hello world", "malformed"),
    ("==12 broken banner", "malformed"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, why):
    lines = TRANS.read_text().splitlines()
    lines.insert(300, bad)  # line 301, beyond the first blocks below
    f = tmp_path / "bad.trace"
    f.write_text("\n".join(lines) + "\n")
    for block in (64, 1 << 20):
        with pytest.raises(TraceError) as e:
            load_trace(LackeySource(f, block_bytes=block))
        msg = str(e.value)
        assert f"bad.trace:301: malformed Lackey line {bad!r}" in msg
        assert why in msg
        assert "\n" not in msg


def test_bad_syscall_arguments(tmp_path):
    f = tmp_path / "sys.lackey"
    f.write_text("I  00001000,2\nSYSCALL[5,1](9) sys_mmap ( 0x0 ) --> [pre-success] "
                 "Success(0x1000)\n")
    with pytest.raises(TraceError, match=r"sys\.lackey:2: .*arguments of sys_mmap"):
        load_trace(f, "lackey")


def test_detect(tmp_path):
    spec_detect = __import__("memvirt.trace.lackey", fromlist=["_detect"])._detect
    assert spec_detect(TRANS)
    f = tmp_path / "banner.log"
    f.write_text("==1== Lackey\n==1== \nSYSCALL[1,1](12) sys_brk ( 0x0 ) --> [pre-success] "
                 "Success(0x1000)\n")
    assert spec_detect(f)
    f.write_text("hello\nI  00001000,2\n")
    assert not spec_detect(f)


_line = st.tuples(st.sampled_from(["I  ", " L ", " S ", " M "]),
                  st.integers(0, 2**64 - 1), st.integers(0, 2**32), st.booleans())


@settings(max_examples=60, deadline=None)
@given(st.lists(_line, min_size=0, max_size=40))
def test_random_access_lines_match_reference(lines):
    text = "".join(f"{p}{a:0{8}x},{s}\n" if pad else f"{p}{a:X},{s}\n"
                   for p, a, s, pad in lines)
    t = parse_lackey_text(text)
    ref = reference_parse(text)
    assert t.kind.tolist() == [r[0] for r in ref]
    assert t.addr.tolist() == [r[1] for r in ref]
    assert t.size.tolist() == [r[2] for r in ref]
