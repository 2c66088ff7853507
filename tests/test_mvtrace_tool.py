"""mvtrace, memvirt's Valgrind capture tool, and mvstream, the decoder of its streams.

Decoder tests use hand-built byte strings.  Tool tests (marked ``valgrind``) compare the tool
with independent references: Valgrind's own Lackey run with the same VALGRIND_LIB and
environment (per-process-image I/L/S/M line counts; with ``--collapse=none`` the accesses
one for one), a straightforward Python collapser written from the format document, and the
reference collapser of test_collapse.py (records, repeat counts and lines bitmaps)."""

from __future__ import annotations

import collections
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from memvirt.errors import TraceError
from memvirt.trace import mvstream as mv
from memvirt.trace import mvtool
from memvirt.trace.records import Kind, Trace

from .test_collapse import collapse as collapse_trace

PROGRAMS = Path(__file__).resolve().parent / "programs"
PAGE = 4096


# --------------------------------------------------------------------------------------------
# hand-built streams


def uv(x: int) -> bytes:
    out = bytearray()
    while True:
        b = x & 0x7F
        x >>= 7
        if x:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def sv(x: int) -> bytes:
    return uv(((x << 1) ^ (x >> 63)) & (2**64 - 1))


def header(pid=10, ppid=1, seq=0, collapse=1, sync=8192, flags=0, magic=b"MVTRACE\0",
           version=2) -> bytes:
    return struct.pack("<8sIIIIIIII24x", magic, version, 64, pid, ppid, seq, collapse, sync,
                       flags)


def lines_field(bitmap: int, addr: int, size: int) -> int:
    """The lines field of a record whose accesses touched the lines of ``bitmap``, written
    out from the format document with a list: the lines other than the first access's
    (f..l), in order of distance from them (l+1, f-1, l+2, f-2 ..., within the page); bit k
    stands for the k-th."""
    off = addr % PAGE
    f, last = off // 64, min(off + size - 1, PAGE - 1) // 64
    order = [c for d in range(1, 64) for c in (last + d, f - d) if 0 <= c < 64]
    return sum(1 << k for k, c in enumerate(order) if bitmap >> c & 1)


def acc(kind: int, delta: int, size: int | None = None, rep: int = 1,
        lines: int | None = None) -> bytes:
    """An access record; size None sets the size-same bit; lines (the raw field value) sets
    bit 6 (format 2)."""
    tag = (kind | (0x10 if rep != 1 else 0) | (0x20 if size is None else 0)
           | (0x40 if lines is not None else 0))
    out = bytes([tag]) + sv(delta)
    if size is not None:
        out += uv(size)
    if rep != 1:
        out += uv(rep)
    if lines is not None:
        out += uv(lines)
    return out


def syscall(sysno, args, result=None) -> bytes:
    tag = 0x41 if result is None else 0x40
    out = bytes([tag]) + uv(sysno) + uv(len(args)) + b"".join(sv(a) for a in args)
    return out + (sv(result) if result is not None else b"")


SAMPLE_BITMAP = 1 << 63 | 1 << 17 | 1  # lines 63 (the first access's), 17 and 0
SAMPLE_FIELD = 1 << 62 | 1 << 45  # from line 63 down: 62 is the 0th, 17 the 45th, 0 the 62nd
SAMPLE = (
    header()
    + bytes([0x43]) + uv(0x400000) + uv(8192) + uv(5) + uv(1)        # MAP
    + bytes([0x42]) + uv(1)                                           # THREAD 1
    + acc(0, 0x401000, 4, rep=3)                                      # I 0x401000 x3
    + acc(1, 0x7FFF0000, 8)                                           # L
    + acc(2, 16, None, rep=2)                                         # S 0x7fff0010, size 8
    + acc(0, 0x20, None)                                              # I 0x401020, size 4
    + acc(3, -0x7FFF0010 + 0x600000, 4)                               # M 0x600000
    + acc(1, -8, None, rep=300, lines=SAMPLE_FIELD)                   # L 0x5ffff8, size 4
    + syscall(9, [0, 4096, 3, 34, -1, 0], 0x7F0000000000)             # mmap
    + acc(0, 2**63 - 0x401020, 1)                                     # I at 2**63 (a wrap)
    + bytes([0x44]) + uv(9) + b"/bin/true"                            # EXEC_PATH
    + syscall(59, [0x1000, 0x2000, 0x3000])                           # SYSCALL_PRE execve
    + syscall(59, [0x1000, 0x2000, 0x3000], -2)                       # failed: -ENOENT
    + bytes([0x45]) + uv(0)                                           # SIGNAL
    + bytes([0x46]) + uv(0) + uv(5) + uv(301) + uv(2) + uv(1) + uv(7)  # END
)

SAMPLE_RECORDS = [
    (0, 0x401000, 4, 3), (1, 0x7FFF0000, 8, 1), (2, 0x7FFF0010, 8, 2), (0, 0x401020, 4, 1),
    (3, 0x600000, 4, 1), (1, 0x5FFFF8, 4, 300), (0, 2**63, 1, 1),
]
SAMPLE_LINES = [0, 0, 0, 0, 0, SAMPLE_BITMAP, 0]
SAMPLE_EVENTS = [
    (0, mv.EV_MAP, (0x400000, 8192, 5, 1)),
    (0, mv.EV_THREAD, (1,)),
    (6, mv.EV_SYSCALL, (9, 6, 0, 4096, 3, 34, -1, 0, 0x7F0000000000)),
    (7, mv.EV_EXEC_PATH, b"/bin/true"),
    (7, mv.EV_SYSCALL_PRE, (59, 3, 0x1000, 0x2000, 0x3000)),
    (7, mv.EV_SYSCALL, (59, 3, 0x1000, 0x2000, 0x3000, -2)),
    (7, mv.EV_SIGNAL, (0,)),
    (7, mv.EV_END, (0, 5, 301, 2, 1, 7)),
]


def records(block) -> list[tuple[int, int, int, int]]:
    return [(int(k), int(a), int(s), int(r))
            for k, a, s, r in zip(block.kind, block.addr, block.size, block.repeat)]


# --------------------------------------------------------------------------------------------
# decoder


def test_decode_sample():
    dec = mv.StreamDecoder("s.bin")
    block = dec.feed(SAMPLE)
    assert dec.header == mv.StreamHeader(10, 1, 0, 1, 8192, 0, 2)
    assert records(block) == SAMPLE_RECORDS
    assert block.lines.tolist() == SAMPLE_LINES
    assert block.events == SAMPLE_EVENTS
    assert block.kind.dtype == np.uint8 and block.addr.dtype == np.uint64
    assert block.size.dtype == np.uint64 and block.repeat.dtype == np.uint32
    assert block.lines.dtype == np.uint64
    assert dec.ended and dec.pending == 0 and dec.offset == len(SAMPLE) and dec.records == 7


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 65, 1000])
def test_decode_any_split(step):
    """Records cut at any byte are carried over; previous address/size persist."""
    dec = mv.StreamDecoder("s.bin")
    blocks = [dec.feed(SAMPLE[i:i + step]) for i in range(0, len(SAMPLE), step)]
    whole = mv.concat_blocks(blocks)
    assert records(whole) == SAMPLE_RECORDS
    assert whole.lines.tolist() == SAMPLE_LINES  # (the lines field's varint is cut too)
    assert whole.events == SAMPLE_EVENTS
    assert dec.pending == 0 and dec.offset == len(SAMPLE)


def test_decode_ndarray_and_cut_end():
    dec = mv.StreamDecoder("s.bin")
    data = np.frombuffer(SAMPLE, np.uint8)
    b1 = dec.feed(data[:100])
    assert dec.pending > 0 or dec.offset == 100
    b2 = dec.feed(data[100:])
    assert records(mv.concat_blocks([b1, b2])) == SAMPLE_RECORDS
    # a stream cut in the middle of a record: the rest stays pending, no error
    dec = mv.StreamDecoder("s.bin")
    dec.feed(SAMPLE[:-3])
    assert dec.pending > 0 and not dec.ended


def test_decode_with_small_scratch(monkeypatch):
    """Output arrays that fill up mid-feed (records and events): positions stay right."""

    class Small(mv._Scratch):
        RECORDS = 3

    monkeypatch.setattr(mv, "_SCRATCH", Small())
    many = SAMPLE + b"".join(bytes([0x42]) + uv(i) + acc(2, 8, None) for i in range(200))
    block = mv.StreamDecoder("s.bin").feed(many)
    assert records(block)[:7] == SAMPLE_RECORDS and len(block) == 207
    assert block.lines.tolist() == SAMPLE_LINES + [0] * 200
    assert block.events[:8] == SAMPLE_EVENTS
    assert block.events[8:] == [(7 + i, mv.EV_THREAD, (i,)) for i in range(200)]


def test_varints_and_zigzag_extremes():
    body = b"".join([
        acc(1, -1, 1), acc(1, 1, 2), acc(1, 2**63 - 1 - 1, 3), acc(1, -(2**63), 4),
        acc(0, 2**64 - 1 - 2**63, 2**32, rep=2**32 - 1),
    ])
    block = mv.StreamDecoder("v", header=False).feed(body)
    assert records(block) == [
        (1, 2**64 - 1, 1, 1), (1, 0, 2, 1), (1, 2**63 - 2, 3, 1), (1, 2**64 - 2, 4, 1),
        (0, 2**64 - 1 - 2**63, 2**32, 2**32 - 1),
    ]
    assert uv(2**64 - 1) == b"\xff" * 9 + b"\x01"  # the longest varint: 10 bytes


def test_size_same_is_per_stream():
    body = acc(0, 0x1000, 5) + acc(1, 0x9000, 8) + acc(0, 5, None) + acc(2, 8, None)
    block = mv.StreamDecoder("v", header=False).feed(body)
    assert records(block) == [(0, 0x1000, 5, 1), (1, 0x9000, 8, 1), (0, 0x1005, 5, 1),
                              (2, 0x9008, 8, 1)]


def bare(recs) -> bytes:
    """Access records from absolute (kind, addr, size, rep, lines bitmap or None) (deltas
    per stream); bytes in the list are copied (events)."""
    out, prev = b"", [0, 0]
    for r in recs:
        if isinstance(r, bytes):
            out += r
            continue
        k, a, s, rep, ln = r
        out += acc(k, a - prev[k != 0], s, rep, None if ln is None else lines_field(ln, a, s))
        prev[k != 0] = a
    return out


LINES_RECORDS = [
    (0, 0x401000, 4, 5, None),                 # a fetch: never a bitmap
    (1, 0x9000, 8, 64, 2**64 - 1),             # a sweep of the page
    (2, 0x9040, 8, 512, None),                 # one word 512 times: absent, 0
    (3, 0xA03C, 8, 2, 0b111),                  # bytes 60-67 (lines 0, 1) and line 2
    bytes([0x42]) + uv(3),                     # THREAD: tag 0x42 is an event, not bit 6
    (1, 0xAFC0, 4, 3, 0b11 << 62),             # line 63 (the first access's) and 62
    (2, 0xBFF0, 32, 2, 1 << 63 | 1),           # crossing: line 63 of its first page, and 0
    (1, 0xC000, 8, 1, None),                   # a single access
    (3, 0xC03C, 8, 9, 1 << 63 | 0b11),         # bytes 60-67 (lines 0, 1) and line 63
    (1, 0xC200, 8, 9, 1 << 63 | 1 << 3 | 1 << 8),  # line 8 (the first access's), 3 and 63
]


def test_lines_field_order():
    """The field's bits, by hand: from line 8, the order is 9, 7, 10, 6, 11, 5, 12, 4, 13, 3
    (the 9th), ..., 16, 0 (the 15th), then 17 ... 63 (the 62nd)."""
    assert lines_field(1 << 9, 0xC200, 8) == 1
    assert lines_field(1 << 7, 0xC200, 8) == 2
    assert lines_field(1 << 63 | 1 << 3 | 1 << 8, 0xC200, 8) == 1 << 62 | 1 << 9
    assert lines_field(1 << 0, 0xC200, 8) == 1 << 15
    assert lines_field(1 << 17, 0xC200, 8) == 1 << 16
    assert lines_field(2**64 - 1, 0xC200, 8) == 2**63 - 1
    assert lines_field(1 << 2, 0xC03C, 8) == 1  # first access on lines 0 and 1
    assert lines_field(1 << 63, 0xC03C, 8) == 1 << 61
    assert lines_field(1 << 62, 0xCFF8, 16) == 1  # crossing: line 63 of the first page


def test_lines_field():
    """Tag bit 6: a uv lines field after repeat (format 2), decoded into the whole bitmap;
    0 where absent."""
    block = mv.StreamDecoder("v", header=False).feed(bare(LINES_RECORDS))
    recs = [r for r in LINES_RECORDS if not isinstance(r, bytes)]
    assert records(block) == [r[:4] for r in recs]
    assert block.lines.tolist() == [r[4] or 0 for r in recs]
    assert block.events == [(4, mv.EV_THREAD, (3,))]
    # the same in a version 2 stream, cut at every byte
    data = header() + bare(LINES_RECORDS)
    dec = mv.StreamDecoder("v2")
    whole = mv.concat_blocks([dec.feed(data[i:i + 1]) for i in range(len(data))])
    assert whole.lines.tolist() == block.lines.tolist() and dec.pending == 0


def test_version_1_streams_have_no_lines():
    """Format 1 streams read as before (lines all 0); tag bit 6 is not an access bit there."""
    plain = [r if isinstance(r, bytes) else (*r[:4], None) for r in LINES_RECORDS]
    dec = mv.StreamDecoder("v1")
    block = dec.feed(header(version=1) + bare(plain))
    assert dec.header.version == 1
    assert records(block) == [r[:4] for r in plain if not isinstance(r, bytes)]
    assert block.lines.tolist() == [0] * len(block) and len(block) == 9
    with pytest.raises(TraceError, match="v1b: byte 64: .*unknown record tag \\(tag 0x71\\)"):
        mv.StreamDecoder("v1b").feed(header(version=1) + acc(1, 0, None, 2, 0b11))


def test_full_streams_have_no_lines():
    """A collapse=none stream: lines all 0 (a shared read-only column: no copy per block),
    and a lines field is an unknown tag there."""
    plain = [r if isinstance(r, bytes) else (*r[:4], None) for r in LINES_RECORDS]
    block = mv.StreamDecoder("none").feed(header(collapse=0) + bare(plain))
    assert len(block) == 9 and not block.lines.any() and not block.lines.flags.writeable
    assert records(block) == [r[:4] for r in plain if not isinstance(r, bytes)]
    with pytest.raises(TraceError, match="none2: byte 64: .*unknown record tag \\(tag 0x52\\)"):
        mv.StreamDecoder("none2").feed(header(collapse=0) + acc(2, 0, 8, 2, 1))


@pytest.mark.parametrize("rec, what", [
    ((0, 0x1000, 4, 2, 1), r"lines field \(tag bit 6\) on an instruction fetch record"),
    ((1, 0x1000, 8, 2, 0), "lines field of 0"),
    ((1, 0x1FC0, 8, 2, 1 << 63), "beyond the page"),      # from line 63: 63 lines, bits 0-62
    ((1, 0x1FC0, 128, 2, 1 << 63), "beyond the page"),    # crossing: the same
    ((3, 0x103C, 8, 2, 1 << 62), "beyond the page"),      # lines 0-1 first: bits 0-61
    ((2, 0x1000, 4096, 2, 1), "beyond the page"),         # the whole page first: no bit
])
def test_lines_field_errors(rec, what):
    """A lines field where the format allows none, or a value that names no line or a line
    beyond the page: the file and the bad record's byte offset are named."""
    first = acc(1, 0x1000, 8) + acc(0, 0x1000, 4)  # both streams at 0x1000
    k, a, size, r, ln = rec
    with pytest.raises(TraceError, match=what) as e:
        mv.StreamDecoder("bad.bin").feed(header() + first + acc(k, a - 0x1000, size, r, ln))
    assert f"bad.bin: byte {64 + len(first)}: malformed mvtrace stream" in str(e.value)


@pytest.mark.parametrize("body, what", [
    (acc(0, 0, 4) + b"\x47", "unknown record tag"),
    (acc(0, 0, 4) + b"\x80\x01", "unknown record tag"),
    (acc(0, 0, 4) + b"\x04\x00\x04", "reserved bits"),
    (acc(0, 0, 4) + b"\x01" + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes"),
    (acc(0, 0, 4) + b"\x01" + b"\xff" * 9 + b"\x02", "varint longer than 10 bytes"),
    (acc(0, 0, 4) + b"\x11\x00\x04\x00", "repeat 0"),
    (acc(0, 0, 4) + acc(1, 0, None), "size 0"),
    (acc(0, 0, 4) + b"\x44" + uv(300) + b"x" * 300, "EXEC_PATH longer"),
    (acc(0, 0, 4) + b"\x41\x3b\x09" + b"\x00" * 9, "more than 8 arguments"),
])
def test_malformed(body, what):
    dec = mv.StreamDecoder("bad.bin")
    with pytest.raises(TraceError, match=what) as e:
        dec.feed(header() + body)
    assert "bad.bin" in str(e.value)
    assert f"byte {64 + len(acc(0, 0, 4))}" in str(e.value)  # the bad record's offset


def test_header_errors():
    h = mv.parse_header(header(pid=5, ppid=4, seq=2, collapse=0, sync=100, flags=1), "f")
    assert (h.pid, h.ppid, h.seq, h.collapse, h.sync, h.exec_image) == (5, 4, 2, 0, 100, True)
    with pytest.raises(TraceError, match="f1.*magic"):
        mv.parse_header(header(magic=b"LACKEY\0\0"), "f1")
    with pytest.raises(TraceError, match="f2.*version 3 is not supported.*versions 1, 2"):
        mv.parse_header(header(version=3), "f2")
    assert mv.parse_header(header(version=1), "f").version == 1
    with pytest.raises(TraceError, match="f3.*64 bytes"):
        mv.parse_header(header()[:40], "f3")
    with pytest.raises(TraceError, match="f4.*magic"):
        mv.StreamDecoder("f4").feed(b"x" * 100)
    dec = mv.StreamDecoder("f5")
    assert len(dec.feed(header()[:30])) == 0 and dec.header is None
    dec.feed(header()[30:])
    assert dec.header is not None


def test_decoder_speed():
    """Well above 50 M records/s (checked loosely: shared test machines are noisy)."""
    rng = np.random.default_rng(1)
    body = bytearray(acc(0, 0x1000, 4) + acc(1, 0x9000, 8))  # sizes for size-same
    for k, d, r in zip(rng.integers(0, 4, 20000), rng.integers(-5000, 5000, 20000),
                       rng.integers(1, 4, 20000)):
        body += acc(int(k), int(d), None if d % 3 else 8, int(r))
    data = header() + bytes(body) * 100
    dec = mv.StreamDecoder("speed")
    dec.feed(data[:10000])
    best = 0.0
    for _ in range(3):
        dec = mv.StreamDecoder("speed")
        t = time.perf_counter()
        n = sum(len(dec.feed(data[i:i + (4 << 20)])) for i in range(0, len(data), 4 << 20))
        best = max(best, n / (time.perf_counter() - t))
    assert n == 2_000_200
    assert best > 15e6, f"{best / 1e6:.1f} M records/s"


# --------------------------------------------------------------------------------------------
# the toolchain


def test_check_toolchain_names_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(mvtool.shutil, "which", lambda exe: f"/usr/bin/{exe}")
    monkeypatch.setattr(mvtool, "VALGRIND_INCLUDE", tmp_path / "nowhere")
    with pytest.raises(TraceError, match="pub_tool_basics.h is missing.*apt-get install"):
        mvtool.check_toolchain()
    monkeypatch.setattr(mvtool.shutil, "which", lambda exe: None if exe == "gcc" else exe)
    with pytest.raises(TraceError, match="gcc is missing.*apt-get install valgrind gcc"):
        mvtool.check_toolchain()


def test_makefile_says_what_is_missing(tmp_path):
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.skip("make or gcc is not installed")
    proc = subprocess.run(["make", "-s", "-C", str(mvtool.SOURCE_DIR), f"BUILD={tmp_path}",
                           f"VALGRIND_INC={tmp_path / 'nowhere'}"],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mvtrace:")]
    assert len(lines) == 1, proc.stderr
    assert "pub_tool_basics.h is missing" in lines[0]
    assert "apt-get install valgrind gcc" in lines[0]
    assert not (tmp_path / "lib").exists()


def test_command_arguments(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMVIRT_MVTRACE_DIR", str(tmp_path))
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "mvtrace-amd64-linux").write_bytes(b"")
    monkeypatch.setattr(mvtool.shutil, "which", lambda exe: f"/usr/bin/{exe}")
    argv, env = mvtool.valgrind_command("out", ["prog", "x"], collapse="none", sync=100)
    assert argv[0] == "/usr/bin/valgrind" and argv[-2:] == ["prog", "x"]
    assert f"--out-dir={Path('out').resolve()}" in argv  # absolute: children may chdir
    assert {"--tool=mvtrace", "--collapse=none", "--sync=100", "--trace-children=yes"} <= \
        set(argv)
    assert env["VALGRIND_LIB"] == str(tmp_path.resolve() / "lib")
    argv2, env2 = mvtool.lackey_command("d/lackey.%p.%n", ["prog"])
    assert "--tool=lackey" in argv2 and "--log-file=d/lackey.%p.%n" in argv2
    assert env2["VALGRIND_LIB"] == env["VALGRIND_LIB"]
    with pytest.raises(TraceError, match="collapse"):
        mvtool.valgrind_command("out", ["prog"], collapse="all")
    with pytest.raises(TraceError, match="sync"):
        mvtool.valgrind_command("out", ["prog"], sync=0)


def test_tool_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMVIRT_MVTRACE_DIR", str(tmp_path))
    with pytest.raises(TraceError, match="MEMVIRT_MVTRACE_DIR.*make -C"):
        mvtool.tool_dir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "mvtrace-amd64-linux").write_bytes(b"")
    assert mvtool.tool_dir() == tmp_path.resolve()
    assert mvtool.TOOL_VERSION == f"2-{mvtool.source_hash()}" == \
        f"{mv.FORMAT_VERSION}-{mvtool.source_hash()}"


# --------------------------------------------------------------------------------------------
# running the tool

valgrind = pytest.mark.valgrind


@valgrind
@pytest.mark.parametrize("user_preload", [None, "libuser.so"])
def test_preload_list_is_never_the_last_environment_string(monkeypatch, user_preload):
    """Valgrind appends a missing LD_PRELOAD as the client's last environment string, where
    ld.so's parsing of it reads the random AT_RANDOM bytes after it (so two captures differed
    in a load).  Under the capture environment the list is modified in place: the program's
    environment, printed by /usr/bin/env, has the list elsewhere than last (Debian's valgrind
    wrapper, a dash script, re-orders the environment by its hash buckets, and always exports
    GLIBCXX_FORCE_NEW, which falls in the last one), the user's list kept."""
    if user_preload is None:
        monkeypatch.delenv("LD_PRELOAD", raising=False)
    else:
        monkeypatch.setenv("LD_PRELOAD", user_preload)
    monkeypatch.setenv("MEMVIRT_TEST_LAST", "1")
    env = mvtool.client_env()
    assert next(iter(env)) == "LD_PRELOAD" and "VALGRIND_LIB" not in env
    # a user's list naming a missing object would only add ld.so warnings: run with none
    if user_preload is not None:
        assert env["LD_PRELOAD"] == user_preload
        return
    out = subprocess.run([shutil.which("valgrind"), "-q", "--tool=none", "/usr/bin/env"],
                         env=env, capture_output=True, text=True, timeout=120, check=True)
    lines = out.stdout.splitlines()
    names = [line.split("=", 1)[0] for line in lines]
    assert names[-1] != "LD_PRELOAD" and names.count("LD_PRELOAD") == 1
    assert "vgpreload_core" in lines[names.index("LD_PRELOAD")]


def lackey_counts(path: Path) -> tuple[int, int, int, int]:
    """I / L / S / M lines of a Lackey log."""
    counts = [0, 0, 0, 0]
    keys = (b"\nI  ", b"\n L ", b"\n S ", b"\n M ")
    tail = b"\n"
    with open(path, "rb") as f:
        while True:
            chunk = f.read(8 << 20)
            if not chunk:
                return tuple(counts)
            data = tail + chunk
            for i, k in enumerate(keys):
                counts[i] += data.count(k)
            tail = data[-3:]  # a key cut here is counted once: its '\n' is before the cut


def lackey_accesses(path: Path) -> list[tuple[int, int, int]]:
    kinds = {"I": 0, "L": 1, "S": 2, "M": 3}
    out = []
    with open(path) as f:
        for line in f:
            if line[:3] in ("I  ", " L ", " S ", " M "):
                a, s = line[3:].split(",")
                out.append((kinds[line[:3].strip()], int(a, 16), int(s)))
    return out


def streams(out: Path) -> dict[tuple[int, int], tuple[mv.StreamHeader, mv.Block]]:
    return {(h.pid, h.seq): (h, b) for h, b in
            (mv.decode_file(f) for f in sorted(out.glob("mvtrace.*")))}


def raw_counts(block) -> tuple[int, int, int, int]:
    return tuple(int(block.repeat[block.kind == k].sum()) for k in range(4))


def end_of(block):
    ends = [v for _, tag, v in block.events if tag == mv.EV_END]
    return ends[0] if ends else None


def run_tools(tmp: Path, cmd, env_extra=None, *, collapse="page", sync=8192, lackey=True):
    """mvtrace (and Lackey, at the same time) on ``cmd``; both must succeed."""
    mv_out, lk_out = tmp / "mv", tmp / "lk"
    mv_out.mkdir(parents=True)
    lk_out.mkdir()
    procs = []
    argv, env = mvtool.valgrind_command(mv_out, cmd, collapse=collapse, sync=sync)
    procs.append(subprocess.Popen(argv, env={**env, **(env_extra or {})},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    if lackey:
        argv, env = mvtool.lackey_command(lk_out / "lackey.%p.%n", cmd)
        procs.append(subprocess.Popen(argv, env={**env, **(env_extra or {})},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode(errors="replace")[-2000:]
    return mv_out, lk_out


def fold_candidates(r1, r2) -> bool:
    """Could r2 have been folded into r1 (same stream, page and kind, no page crossing)?"""
    (k1, a1, s1), (k2, a2, s2) = r1, r2
    return (k1 == k2 and a1 >> 12 == a2 >> 12 and (a1 % PAGE) + s1 <= PAGE
            and (a2 % PAGE) + s2 <= PAGE)


def check_collapse_invariants(h: mv.StreamHeader, block) -> None:
    """A collapsed stream as the format says: a fetch record starts at every sync point, and
    two consecutive records of one stream are never fold candidates unless a sync point or
    an event lies between them."""
    assert h.collapse == 1
    g = h.sync
    kind, addr, size, rep = (block.kind.tolist(), block.addr.tolist(), block.size.tolist(),
                             block.repeat.tolist())
    events = {pos for pos, _, _ in block.events}
    starts = set()
    icount = 0
    last = [None, None]  # last record index of the fetch and the data stream
    closed_since = [True, True]
    for i, k in enumerate(kind):
        if i in events:
            closed_since = [True, True]
        s = 0 if k == 0 else 1
        if k == 0:
            if icount and icount % g == 0:
                closed_since = [True, True]
            starts.add(icount)
            icount += rep[i]
            assert rep[i] <= g
        r = (k, addr[i], size[i])
        if last[s] is not None and not closed_since[s]:
            j = last[s]
            assert not fold_candidates((kind[j], addr[j], size[j]), r), (i, j, r)
        last[s] = i
        closed_since[s] = False
    missing = [x for x in range(g, icount, g) if x not in starts]
    assert not missing, f"no fetch record starts at sync points {missing[:5]}"


def collapse_reference(accesses, event_positions, g):
    """The collapsed stream written from the format document: accesses (kind, addr, size)
    of a collapse=none stream -> records [kind, addr, size, repeat] and event positions."""
    out = []
    open_run = [None, None]
    new_events = []
    ev = collections.Counter(event_positions)
    icount = 0
    for i, (k, a, s) in enumerate(accesses):
        if ev[i]:
            open_run = [None, None]
            new_events += [len(out)] * ev[i]
        st = 0 if k == 0 else 1
        if k == 0:
            if icount and icount % g == 0:
                open_run = [None, None]
            icount += 1
        j = open_run[st]
        if j is not None and fold_candidates(tuple(out[j][:3]), (k, a, s)):
            out[j][3] += 1
            continue
        out.append([k, a, s, 1])
        open_run[st] = len(out) - 1 if (a % PAGE) + s <= PAGE else None
    new_events += [len(out)] * ev[len(accesses)]
    return [tuple(r) for r in out], new_events


def assert_same_but_random(got, want, stack):
    """Records equal, but for the address of a few 1-byte loads from the stack: ld.so scans
    strings 4 aligned bytes at a time, into the 16 random bytes of AT_RANDOM (new in every
    run), and looks each byte up in a table on its stack (which may have grown into the
    pages below the initial stack segment)."""
    assert len(got) == len(want)
    differ = [(g, w) for g, w in zip(got, want) if g != w]
    assert len(differ) <= 16, differ[:5]
    lo = stack[0] - (1 << 20)
    for g, w in differ:
        assert g[0] == w[0] == 1 and g[2] == w[2] == 1 and g[3:] == w[3:], (g, w)
        assert lo <= g[1] < stack[1] and lo <= w[1] < stack[1], (g, w)


def stream_trace(block, pid: int = 1) -> Trace:
    """A decoded stream as a ``Trace`` for test_collapse.py's reference collapser: its access
    records (a fetch record of repeat n retires n instructions) and, at each of its events
    (all of which close the runs), a SWITCH record."""
    pos = np.array([p for p, _, _ in block.events], np.int64)
    n, ne = len(block), len(pos)
    icount = np.where(block.kind == 0, block.repeat, 0).astype(np.uint32)
    return Trace(kind=np.insert(block.kind, pos, np.full(ne, int(Kind.SWITCH), np.uint8)),
                 addr=np.insert(block.addr, pos, np.zeros(ne, np.uint64)),
                 size=np.insert(block.size, pos, np.zeros(ne, np.uint64)),
                 pid=np.full(n + ne, pid, np.int64),
                 icount=np.insert(icount, pos, np.zeros(ne, np.uint32)),
                 repeat=np.insert(block.repeat, pos, np.ones(ne, np.uint32)),
                 lines=np.insert(block.lines, pos, np.zeros(ne, np.uint64)))


def check_lines_against_reference(full, page, sync: int, stack) -> int:
    """The collapsed stream ``page`` equals test_collapse.py's reference collapser applied
    to the full stream ``full`` of another run of the same program, record for record
    (kind, address, size, instructions, repeat and lines bitmap; sync points and events
    included), but for the few stack loads whose address is random in every run (see
    ``assert_same_but_random``).  Returns the number of records with a bitmap."""
    assert set(full.repeat.tolist()) <= {1} and not full.lines.any()
    want = collapse_trace(stream_trace(full), g=sync)
    got = stream_trace(page)
    rows = [list(zip(*(c.tolist() for c in t.columns().values()))) for t in (got, want)]
    assert len(rows[0]) == len(rows[1])
    differ = [(g, w) for g, w in zip(*rows) if g != w]
    assert len(differ) <= 16, differ[:5]
    lo = stack[0] - (1 << 20)
    for g, w in differ:
        # loads on the stack, where a random 1-byte load was the first access (its address)
        # or a folded one (the bitmap)
        assert g[0] == w[0] == 1 and g[2:6] == w[2:6], (g, w)
        assert lo <= g[1] < stack[1] and lo <= w[1] < stack[1], (g, w)
        assert g[1] == w[1] or g[2] == 1, (g, w)
    return int((got.lines != 0).sum())


@valgrind
def test_single_process_exact(tmp_path, programs):
    """One process: collapse=none equals Lackey line for line; collapse=page equals the
    reference collapser applied to the none stream, and its invariants hold."""
    cmd = [str(programs / "mv_single")]
    none_out, lk_out = run_tools(tmp_path / "a", cmd, collapse="none")
    page_out, _ = run_tools(tmp_path / "b", cmd, collapse="page", sync=1000, lackey=False)
    (lk_log,) = lk_out.iterdir()
    want = lackey_accesses(lk_log)
    ((h0, full),) = streams(none_out).values()
    ((h1, page),) = streams(page_out).values()
    assert h0.collapse == 0 and h1.collapse == 1 and h1.sync == 1000
    assert set(full.repeat.tolist()) == {1}
    got = list(zip(full.kind.tolist(), full.addr.tolist(), full.size.tolist()))
    stack = [(v[0], v[0] + v[1]) for _, t, v in full.events if t == mv.EV_MAP and v[3] == 2]
    assert_same_but_random(got, want, stack[0])
    counts = (sum(k == 0 for k, _, _ in want), sum(k == 1 for k, _, _ in want),
              sum(k == 2 for k, _, _ in want), sum(k == 3 for k, _, _ in want))
    assert raw_counts(full) == counts == tuple(end_of(full)[1:5])
    assert raw_counts(page) == counts == tuple(end_of(page)[1:5])
    assert end_of(page)[5] == len(page) and end_of(full)[5] == len(full)
    assert counts[3] > 0 and len(page) < len(full) / 3
    # the program's rep movs / rep stos: each iteration is an instruction of its own
    assert sum(1 for k, a, s in want if k == 0 and s == 2) > 3000
    ref, ref_events = collapse_reference(got, [p for p, _, _ in full.events], h1.sync)
    assert_same_but_random(records(page), ref, stack[0])
    assert [p for p, _, _ in page.events] == ref_events
    assert [t for _, t, _ in page.events] == [t for _, t, _ in full.events]
    check_collapse_invariants(h1, page)
    # the lines bitmaps (and everything else) against test_collapse.py's reference collapser
    assert not full.lines.any()
    with_lines = check_lines_against_reference(full, page, h1.sync, stack[0])
    assert with_lines > 100
    sweeps = page.lines == np.uint64(2**64 - 1)  # rep stos / memset / memcpy over whole pages
    assert sweeps.sum() >= 10 and (page.kind[sweeps] != 0).all()
    # MAP records first, then THREAD, before any access record
    tags = [t for p, t, _ in page.events if p == 0]
    assert tags[-1] == mv.EV_THREAD and set(tags[:-1]) == {mv.EV_MAP}
    assert page.events[-2][1:] == (mv.EV_SYSCALL_PRE, (231, 1, 0))


def per_image_check(mv_out: Path, lk_out: Path) -> dict:
    got = streams(mv_out)
    for (pid, seq), (h, block) in got.items():
        end = end_of(block)
        if end is not None:
            assert tuple(end[1:5]) == raw_counts(block) and end[5] == len(block), (pid, seq)
        check_collapse_invariants(h, block)
    lk = {}
    for f in lk_out.iterdir():
        _, pid, n = f.name.split(".")
        lk[(int(pid), int(n))] = lackey_counts(f)
        f.unlink()  # (Lackey logs are large: 20 bytes per access)
    assert sorted(raw_counts(b) for _, b in got.values()) == sorted(lk.values())
    # the same number of images per process
    assert sorted(collections.Counter(p for p, _ in got).values()) == \
        sorted(collections.Counter(p for p, _ in lk).values())
    return got


@valgrind
def test_multi_process_exact(tmp_path, programs):
    """fork + exec of another binary + wait, and a forked child exiting with status 7."""
    got = per_image_check(*run_tools(tmp_path, [str(programs / "mv_multi"),
                                                str(programs / "mv_single")]))
    assert len(got) == 4
    parent = min(h.pid for h, _ in got.values())
    (h_exec, b_exec), = [(h, b) for h, b in got.values() if h.seq == 1]
    assert h_exec.exec_image and h_exec.ppid == parent
    h_pre, b_pre = got[(h_exec.pid, 0)]
    assert not h_pre.exec_image
    # the image before the exec: the child's side of the fork first, then ... execve
    _, tag, values = b_pre.events[0]
    assert tag == mv.EV_SYSCALL and values[0] == 56 and values[-1] == 0  # clone, result 0
    assert [t for _, t, _ in b_pre.events[-2:]] == [mv.EV_EXEC_PATH, mv.EV_SYSCALL_PRE]
    assert b_pre.events[-2][2] == str(programs / "mv_single").encode()
    assert end_of(b_pre) is None
    codes = sorted(end_of(b)[0] for h, b in got.values() if end_of(b) is not None)
    assert codes == [0, 0, 7]
    _, b_parent = got[(parent, 0)]
    forks = [v[-1] for _, t, v in b_parent.events if t == mv.EV_SYSCALL and v[0] == 56]
    waits = [v for _, t, v in b_parent.events if t == mv.EV_SYSCALL_PRE and v[0] == 61]
    assert sorted(forks) == sorted({h.pid for h, _ in got.values()} - {parent})
    assert list(dict.fromkeys(w[2] for w in waits)) == forks  # (Valgrind may restart one)


@valgrind
def test_lines_exact_fork_exec(tmp_path, programs):
    """Every image of fork + exec + wait (the forked child's stream starts with the clone
    result; the exec'd image is a file of its own): collapsed with an odd sync interval,
    each stream equals the reference collapser applied to the same image's full stream of
    another run, lines bitmaps included.  (Images are matched by the order of their pids.)"""
    cmd = [str(programs / "mv_multi"), str(programs / "mv_single")]
    none_out, _ = run_tools(tmp_path / "a", cmd, collapse="none", lackey=False)
    page_out, _ = run_tools(tmp_path / "b", cmd, collapse="page", sync=777, lackey=False)

    def by_rank(out):
        got = streams(out)
        pids = sorted({pid for pid, _ in got})
        return {(pids.index(pid), seq): v for (pid, seq), v in got.items()}

    full, page = by_rank(none_out), by_rank(page_out)
    assert sorted(full) == sorted(page) and len(full) == 4
    stacks = {key: [(v[0], v[0] + v[1]) for _, t, v in b.events if t == mv.EV_MAP and v[3] == 2]
              for key, (_, b) in full.items()}
    with_lines = 0
    for key, (h, block) in page.items():
        assert h.sync == 777 and h.version == mv.FORMAT_VERSION
        stack = (stacks[key] or stacks[(0, 0)])[0]  # a forked child: its parent's stack
        with_lines += check_lines_against_reference(full[key][1], block, 777, stack)
    assert with_lines > 1000


@valgrind
def test_threads_exact(tmp_path, programs):
    """Three pthreads (a program whose instructions do not depend on the scheduling)."""
    got = per_image_check(*run_tools(tmp_path, [str(programs / "mv_threads")]))
    ((_, block),) = got.values()
    tids = [v[0] for _, t, v in block.events if t == mv.EV_THREAD]
    assert tids[0] == 1 and len(set(tids)) >= 3
    assert all(a != b for a, b in zip(tids, tids[1:]))  # written only on a change
    clones = [v for _, t, v in block.events if t == mv.EV_SYSCALL and v[0] == 56]
    assert len(clones) == 3 and all(v[2] & 0x10000 for v in clones)  # CLONE_THREAD


@valgrind
def test_python_exact(tmp_path, tool):
    """The real interpreter binary (not a shim), with a fixed hash seed."""
    python = os.path.realpath(sys.executable)
    code = "d = {str(i): i for i in range(300)}\nprint(sum(v for k, v in d.items() if '7' in k))"
    got = per_image_check(*run_tools(tmp_path, [python, "-S", "-c", code],
                                     {"PYTHONHASHSEED": "0"}))
    assert len(got) == 1


# --------------------------------------------------------------------------------------------
# bad input


def run_mvtrace(out: Path, cmd, sync=8192, timeout=120, **popen):
    out.mkdir(parents=True, exist_ok=True)
    argv, env = mvtool.valgrind_command(out, cmd, sync=sync)
    return subprocess.run(argv, env=env, capture_output=True, timeout=timeout, **popen)


@valgrind
def test_command_not_found(tmp_path, tool):
    proc = run_mvtrace(tmp_path / "out", [str(tmp_path / "no-such-program")])
    assert proc.returncode != 0
    assert b"No such file or directory" in proc.stderr
    for _, block in streams(tmp_path / "out").values():
        assert len(block) == 0


@valgrind
def test_exit_status_and_fatal_signal(tmp_path, tool):
    proc = run_mvtrace(tmp_path / "a", ["/bin/sh", "-c", "exit 3"])
    assert proc.returncode == 3
    ((_, block),) = streams(tmp_path / "a").values()
    assert end_of(block)[0] == 3
    assert mv.EV_SIGNAL not in [t for _, t, _ in block.events]
    proc = run_mvtrace(tmp_path / "b", ["/bin/sh", "-c", "kill -SEGV $$"])
    assert proc.returncode == -signal.SIGSEGV
    ((_, block),) = streams(tmp_path / "b").values()
    assert [t for _, t, _ in block.events[-2:]] == [mv.EV_SIGNAL, mv.EV_END]
    assert tuple(end_of(block)[1:5]) == raw_counts(block)


@valgrind
def test_killed_stream_has_no_end(tmp_path, programs):
    out = tmp_path / "out"
    out.mkdir()
    argv, env = mvtool.valgrind_command(out, [str(programs / "mv_single"), "1000000"], sync=1)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            files = list(out.glob("mvtrace.*"))
            if files and files[0].stat().st_size > 64:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (f,) = out.glob("mvtrace.*")
    dec = mv.StreamDecoder(str(f))
    block = dec.feed(f.read_bytes())
    assert len(block) > 1000 and not dec.ended and end_of(block) is None


@valgrind
def test_output_errors_stop_tracing_cleanly(tmp_path, programs):
    # a folder that does not exist: one line, the program runs on
    argv, env = mvtool.valgrind_command(tmp_path / "x", [str(programs / "mv_single")])
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip()
    msg = [ln for ln in proc.stderr.decode().splitlines() if "mvtrace:" in ln]
    assert len(msg) == 1 and "cannot create" in msg[0] and "no such file" in msg[0], msg

    # a write that fails (file size limit: EFBIG, like ENOSPC)
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    proc = run_mvtrace(tmp_path / "y", [str(programs / "mv_single")], sync=1,
                       preexec_fn=limit)
    assert proc.returncode == 0 and proc.stdout.strip()
    msg = [ln for ln in proc.stderr.decode().splitlines() if "mvtrace:" in ln]
    assert len(msg) == 1 and "cannot write" in msg[0] and "file too large" in msg[0], msg
    (f,) = (tmp_path / "y").glob("mvtrace.*")
    assert f.stat().st_size == 1 << 20
    dec = mv.StreamDecoder(str(f))
    block = dec.feed(f.read_bytes())
    assert len(block) > 0 and not dec.ended
