"""Hardening of the trace readers and writers against bad input.

Lackey lines have a length cap (memory bounded whatever the input, even without newlines);
Lackey values that become record fields are range-checked; every reader can say where a
record came from (``locate``); the Parquet metadata is bounded and checked; the trace
writer leaves no temporary file behind, also when ``memvirt import``/``synth`` get SIGTERM.
"""

from __future__ import annotations

import gc
import json
import lzma
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memvirt.cli import main
from memvirt.errors import TraceError
from memvirt.trace import parquet as pqmod
from memvirt.trace.base import InMemorySource, load_trace, locate_record
from memvirt.trace.champsim import ChampSimSource
from memvirt.trace.lackey import (
    MAX_LINE_BYTES,
    LackeySource,
    iter_lackey_blocks,
    parse_lackey_text,
)
from memvirt.trace.parquet import META_KEY, ParquetTraceSource, TraceWriter, write_trace
from memvirt.trace.records import Kind, Trace

ROOT = Path(__file__).resolve().parents[1]
MEMVIRT = str(Path(sys.executable).with_name("memvirt"))
LIMIT = f"line longer than {MAX_LINE_BYTES} bytes"


def tmp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------------------------
# 1. Lackey: a line-length cap, bounded reads


class CountingReader:
    """A binary file that counts what is read from it and refuses to go beyond ``limit``
    (so an unbounded reader fails the test instead of eating the machine's memory)."""

    def __init__(self, f, limit: int):
        self.f = f
        self.limit = limit
        self.read_bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.read_bytes += len(data)
        assert self.read_bytes <= self.limit, f"read {self.read_bytes} bytes: unbounded"
        return data


def test_dev_zero_stops_after_the_cap():
    block = 1 << 20
    with open("/dev/zero", "rb") as f:
        r = CountingReader(f, 64 << 20)
        with pytest.raises(TraceError) as e:
            for _ in iter_lackey_blocks(r, block):
                pass
    assert f":1: {LIMIT}" in str(e.value)
    assert r.read_bytes <= block + MAX_LINE_BYTES


@pytest.mark.parametrize("block", [1000, 1 << 16, 4 << 20])
def test_a_long_line_names_its_number_whatever_the_blocks(tmp_path, block):
    f = tmp_path / "long.lackey"
    good = "I  04001000,4\n L 7ff000,8\n" * 5  # lines 1-10
    f.write_text(good + "I  " + "0" * 100_000 + ",4\n" + good)
    with pytest.raises(TraceError) as e:
        load_trace(LackeySource(f, block_bytes=block))
    assert str(e.value).startswith(f"{f}:11: {LIMIT}")


def test_a_line_at_the_cap_is_read_one_beyond_is_not(tmp_path):
    f = tmp_path / "edge.lackey"
    line = "I  04001000,4"
    at_cap = line + " " * (MAX_LINE_BYTES - len(line))
    f.write_text("I  1,1\n" + at_cap + "\nI  2,2\n")
    for block in (1000, 4 << 20):
        t = load_trace(LackeySource(f, block_bytes=block))
        assert t.addr.tolist() == [1, 0x4001000, 2]
    f.write_text("I  1,1\n" + at_cap + " \nI  2,2\n")
    for block in (1000, 4 << 20):
        with pytest.raises(TraceError, match=f"edge.lackey:2: {LIMIT}"):
            load_trace(LackeySource(f, block_bytes=block))


# ``memvirt import`` in a subprocess whose address space may grow by 512 MiB at most: an
# unbounded reader dies of MemoryError (no JSON line) instead of taking the machine's memory.
_BOUNDED = r"""
import json, resource, sys, time
import memvirt.cli, memvirt.trace.lackey, memvirt.trace.parquet
memvirt.trace.lackey.parse_lackey_text("I  0400,4\n")  # load the compiled scanner
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
limit = vm * 1024 + (512 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.time()
rc = memvirt.cli.main(sys.argv[1:])
print(json.dumps({"rc": rc, "grew_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                  - rss0, "seconds": time.time() - t0}))
"""


def bounded_import(path, out) -> tuple[dict, str]:
    r = subprocess.run([sys.executable, "-c", _BOUNDED, "import", "--format", "lackey",
                        str(path), "-o", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.strip(), r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_file_without_newlines_errors_promptly_in_bounded_memory(tmp_path):
    f = tmp_path / "nonl.lackey"
    with open(f, "wb") as fh:
        chunk = b"I  0400,4 " * (1 << 16)
        for _ in range(48):  # 30 MiB, not one newline
            fh.write(chunk)
    res, err = bounded_import(f, tmp_path / "o.parquet")
    assert res["rc"] == 2
    assert f"memvirt: error: {f}:1: {LIMIT}" in err
    assert res["grew_kib"] < 48 << 10  # a few blocks, not the file (times 3)
    assert res["seconds"] < 20
    assert not (tmp_path / "o.parquet").exists() and tmp_files(tmp_path) == []


def test_import_of_dev_zero_stops(tmp_path):
    res, err = bounded_import("/dev/zero", tmp_path / "o.parquet")
    assert res["rc"] == 2
    assert f"memvirt: error: /dev/zero:1: {LIMIT}" in err
    assert res["grew_kib"] < 48 << 10
    assert tmp_files(tmp_path) == []


# --------------------------------------------------------------------------------------------
# 2. Lackey: values that become record fields are range-checked


@pytest.mark.parametrize("line, why", [
    ("==100000000000000000000000== Lackey", "pid of a '==PID==' banner must be at most"),
    ("==9223372036854775808==", "pid of a '==PID==' banner must be at most"),
    ("==" + "9" * 5000 + "==", "pid of a '==PID==' banner must be at most"),
    ("SYSCALL[1,1](11) sys_munmap ( 0x1000, 100000000000000000000000 ) --> [sync] "
     "Success(0x0)", "argument 2 of munmap (100000000000000000000000) is not an unsigned "
                     "64-bit value"),
    ("SYSCALL[1,1](11) sys_munmap ( 0xfffffffffffff000, 8192 ) --> [sync] Success(0x0)",
     "the unmapped range 0xfffffffffffff000+8192 ends beyond the 64-bit address space"),
    ("SYSCALL[1,1](11) sys_munmap ( 0x1000, " + "9" * 5000 + " ) --> [sync] Success(0x0)",
     "has more digits than a 64-bit value"),
    ("SYSCALL[1,1](9) sys_mmap ( 0x0, -1, 3, 34, -1, 0 ) --> [sync] Success(0x7000)",
     "argument 2 of mmap (-1) is not an unsigned 64-bit value"),
    ("SYSCALL[1,1](9) sys_mmap ( 0x0, 8192, 3, 34, -1, 0 ) --> [sync] "
     "Success(0xfffffffffffff000)", "the mapping 0xfffffffffffff000+8192 ends beyond"),
    ("SYSCALL[1,1](9) sys_mmap ( 0x0, 8192, 3, 34, -1, 0 ) --> [sync] "
     "Success(0x10000000000000000)", "the result of mmap (0x10000000000000000) is beyond"),
    ("SYSCALL[1,1](12) sys_brk ( 0x0 ) --> [sync] Success(0x100000000000000000)",
     "the result of brk (0x100000000000000000) is beyond the 64-bit address space"),
    ("SYSCALL[1,1](25) sys_mremap ( 0xffffffffffff0000, 4096, 1048576, 0x1 ) --> [sync] "
     "Success(0xffffffffffff0000)", "the remapped range 0xffffffffffff0000+1048576 ends "
                                    "beyond"),
    ("SYSCALL[1,1](57) sys_fork ( ) --> [sync] Success(0x8000000000000000)",
     "child pid returned by fork (9223372036854775808) does not fit int64"),
    ("SYSCALL[1,1](56) sys_clone ( 100000000000000000, 0x0 ) --> [sync] Success(0x5)",
     "argument 1 of clone (100000000000000000) is not an unsigned 64-bit value"),
])
def test_out_of_range_values_name_file_and_line(tmp_path, line, why):
    f = tmp_path / "range.lackey"
    f.write_text("==7== Lackey\nI  04001000,4\n" + line + "\nI  04001004,4\n")
    with pytest.raises(TraceError) as e:
        load_trace(f, "lackey")
    msg = str(e.value)
    assert msg.startswith(f"{f}:3: "), msg
    assert why in msg
    assert "\n" not in msg and len(msg) < 600


def test_values_at_the_limits_are_read_one_beyond_is_not():
    t = parse_lackey_text(
        "==9223372036854775807== Lackey\n"
        "SYSCALL[1,1](9) sys_mmap ( 0x0, 8192, 3, 34, -1, 0 ) --> [sync] "
        "Success(0xffffffffffffe000)\n"
        "SYSCALL[1,1](11) sys_munmap ( 0xffffffffffffe000, 8192 ) --> [sync] Success(0x0)\n"
        "SYSCALL[1,1](12) sys_brk ( 0x0 ) --> [sync] Success(0xffffffffffffffff)\n"
        "SYSCALL[1,1](57) sys_fork ( ) --> [sync] Success(0x7fffffffffffffff)\n"
        "SYSCALL[1,1](9) sys_mmap ( 0x0, -1, 3, 34, -1, 0 ) --> [sync] Failure(0xc)\n")
    assert [Kind(k).name for k in t.kind] == ["MMAP", "MUNMAP", "BRK", "FORK"]
    assert t.addr.tolist() == [2**64 - 8192, 2**64 - 8192, 2**64 - 1, 2**63 - 1]
    assert (t.pid == 2**63 - 1).all()
    for beyond in ("==9223372036854775808== Lackey",
                   "SYSCALL[1,1](9) sys_mmap ( 0x0, 8193, 3, 34, -1, 0 ) --> [sync] "
                   "Success(0xffffffffffffe000)",
                   "SYSCALL[1,1](12) sys_brk ( 0x0 ) --> [sync] Success(0x10000000000000000)",
                   "SYSCALL[1,1](57) sys_fork ( ) --> [sync] Success(0x8000000000000000)"):
        with pytest.raises(TraceError, match="<text>:1: "):
            parse_lackey_text(beyond + "\n")


def test_cli_range_error_exit_2_no_traceback(tmp_path, capsys):
    f = tmp_path / "pid.lackey"
    f.write_text("==100000000000000000000000== Lackey\nI  04001000,4\n")
    assert main(["import", str(f), "-o", str(tmp_path / "o.parquet"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"memvirt: error: {f}:1: the pid of a '==PID==' banner")
    assert "Traceback" not in err and tmp_files(tmp_path) == []


@pytest.mark.parametrize("pid", [-1, 2**63, 10**30])
def test_given_pid_out_of_range(tmp_path, pid):
    f = tmp_path / "p.lackey"
    f.write_text("I  04001000,4\n")
    with pytest.raises(TraceError, match="out of range"):
        load_trace(LackeySource(f, pid=pid))


def test_many_glued_syscall_lines_do_not_recurse():
    # two processes writing one log glue SYSCALL lines; thousands in one line (under the cap)
    glued = "SYSCALL[1,1](12) sys_brk ( 0x0 ) --> [sync] Success(0x5000)" * 1000
    assert len(glued) < MAX_LINE_BYTES
    t = parse_lackey_text("I  04001000,4\n" + glued + "\n")
    assert (t.kind[1:] == Kind.BRK).all() and len(t) == 1001


# --------------------------------------------------------------------------------------------
# 3. locate: where a record came from


LOG = """\
==42== Lackey, an example Valgrind tool
==42==
I  04001000,4
 L 7ff000,8
SYSCALL[42,1](9) sys_mmap ( 0x0, 12288, 3, 34, 4294967295, 0 ) --> [pre-success] Success(0x483c000)

--42-- a Valgrind message
 S 0483c008,8
SYSCALL[42,1](25) sys_mremap ( 0x483c000, 8192, 65536, 0x1 ) --> [pre-success] Success(0x5000000)
I  04001004,4
SYSCALL[42,1](58) sys_fork ( )   fork: process 42 created child 43
 --> [pre-success] Success(0x2b)
SYSCALL[42,1](11) sys_munmap ( 0x5000000, 65536 ) --> [async] ...
I  04001008,4
 M 7ff010,4
SYSCALL[42,1](11) ... [async] --> Success(0x0)
==42== Process terminating with default action of signal 9 (SIGKILL)
SYSCALL[43,1](59) sys_execve ( 0x1, 0x2 )
"""
# (kind, the line each record comes from): an event is located at its SYSCALL line (the
# call, not its continuation or [async] completion) or its banner
EXPECTED = [("IFETCH", 3), ("LOAD", 4), ("MMAP", 5), ("STORE", 8), ("MUNMAP", 9), ("MMAP", 9),
            ("IFETCH", 10), ("FORK", 11), ("IFETCH", 14), ("MODIFY", 15), ("MUNMAP", 13),
            ("EXIT", 17), ("EXEC", 18)]


@pytest.mark.parametrize("block", [16, 100, 4 << 20])
@pytest.mark.parametrize("chunk", [1, 3, 5, 100])
def test_lackey_locate(tmp_path, block, chunk):
    f = tmp_path / "log.lackey"
    f.write_text(LOG)
    src = LackeySource(f, block_bytes=block)
    assert src.locate(0) is None  # nothing read yet
    seen = []
    start = prev = 0
    for c in src.chunks(chunk):
        for i in range(len(c)):
            seen.append(Kind(int(c.kind[i])).name)
        # every record of this chunk and of the previous one
        for r in range(prev, start + len(c)):
            assert src.locate(r) == f"{f}:{EXPECTED[r][1]}", r
        assert src.locate(10**6) is None
        prev, start = start, start + len(c)
    assert seen == [k for k, _ in EXPECTED]


def test_lackey_locate_keeps_two_chunks_only(tmp_path):
    f = tmp_path / "big.lackey"
    f.write_text("I  04001000,4\n" * 50_000)
    src = LackeySource(f, block_bytes=4096)
    n = 0
    for c in src.chunks(1000):
        assert src.locate(n + 999) == f"{f}:{n + 1000}"
        if n >= 1000:
            assert src.locate(n - 1000) == f"{f}:{n - 999}"
        if n >= 10_000:
            assert src.locate(n - 8000) is None  # forgotten: memory stays bounded
        kept = sum(m[1] - m[0] for m in src._maps)
        assert kept < 3 * 1000 + 4096  # two chunks and a block read ahead, at most
        n += len(c)


def _champsim(records) -> bytes:
    out = b""
    for ip, src, dst in records:
        out += struct.pack("<QBB2B4B2Q4Q", ip, 0, 0, 0, 0, 0, 0, 0, 0,
                           *(list(dst) + [0] * (2 - len(dst))), *(list(src) + [0] * (4 - len(src))))
    return out


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("block, chunk", [(1, 1), (2, 3), (3, 7), (1 << 16, 1 << 20)])
def test_champsim_locate(tmp_path, compress, block, chunk):
    recs = [(0x400000 + 4 * i, [0x1000 * (j + 1) for j in range(i % 5)],
             [0x9000 + j for j in range(i % 3)]) for i in range(23)]
    # memvirt records per ChampSim record: its IFETCH, its loads, its stores
    owner = [i for i, (_, s, d) in enumerate(recs) for _ in range(1 + len(s) + len(d))]
    data = _champsim(recs)
    f = tmp_path / ("t.champsim.xz" if compress else "t.champsim")
    f.write_bytes(lzma.compress(data) if compress else data)
    src = ChampSimSource(f, block_records=block)
    byte = "decompressed byte" if compress else "byte"
    start = prev = 0
    for c in src.chunks(chunk):
        for r in range(prev, start + len(c)):
            n = owner[r]
            assert src.locate(r) == f"{f}: {byte} {64 * n} (record {n})", r
        prev, start = start, start + len(c)
    assert start == len(owner)
    assert src.locate(len(owner)) is None


def test_parquet_locate(tmp_path):
    t = Trace.from_records([(int(Kind.LOAD), 4096 * i, 8, 1, 0) for i in range(10)])
    f = write_trace(t, tmp_path / "t.parquet", row_group_records=3)
    src = ParquetTraceSource(f)
    for c in src.chunks(4):
        assert len(c)
    assert [src.locate(r) for r in (0, 9)] == [f"{f}: row 0", f"{f}: row 9"]
    assert src.locate(10) is None and src.locate(-1) is None


def test_locate_record_helper():
    class Broken:
        meta: dict = {}

        def locate(self, r):
            raise IndexError(r)

    assert locate_record(InMemorySource(Trace.empty()), 3) is None  # no locate: None
    assert locate_record(Broken(), 3) is None  # never hides the error being reported

    class Fine:
        def locate(self, r):
            return f"f:{r + 1}"

    assert locate_record(Fine(), 3) == "f:4"


# --------------------------------------------------------------------------------------------
# 4. Parquet metadata


def _parquet_with_meta(path: Path, meta: dict[bytes, bytes]) -> Path:
    n = 3
    table = pa.table({
        "kind": pa.array(np.ones(n, np.uint8)), "addr": pa.array(np.arange(n, dtype=np.uint64)),
        "size": pa.array(np.ones(n, np.uint64)), "pid": pa.array(np.ones(n, np.int64)),
        "icount": pa.array(np.zeros(n, np.uint32)), "repeat": pa.array(np.ones(n, np.uint32)),
    }).replace_schema_metadata({b"memvirt.format_version": b"2", **meta})
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("value, why", [
    (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
    (b'{"a": ' + b"[" * 200 + b"]" * 200 + b"}", "nests too deeply"),
    (b"[1, 2]", "is not a JSON object (it is a JSON array)"),
    (b'"text"', "is not a JSON object (it is a JSON string)"),
    (b'{"a": "\xff"}', "is not UTF-8 text (byte 7 is 0xff)"),
    (b"\xff\xfe{\x00}\x00", "is not UTF-8 text (byte 0 is 0xff)"),
    (b'{"a": "' + b"x" * (17 << 20) + b'"}', "bytes long (at most 16,777,216 are read)"),
    (b"{", "is not valid JSON (Expecting property name enclosed in double quotes: line 1 "
           "column 2 (char 1))"),
])
def test_bad_metadata_names_file_and_key(tmp_path, value, why):
    f = _parquet_with_meta(tmp_path / "m.parquet", {META_KEY.encode(): value})
    with pytest.raises(TraceError) as e:
        ParquetTraceSource(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: metadata {META_KEY} "), msg
    assert why in msg and "\n" not in msg and len(msg) < 600


@pytest.mark.parametrize("version", [b"0", b"-1", b"9" * 5000,
                                     str(pqmod.FORMAT_VERSION + 1).encode()])
def test_bad_format_version_names_the_key(tmp_path, version):
    f = _parquet_with_meta(tmp_path / "v.parquet", {b"memvirt.format_version": version})
    with pytest.raises(TraceError, match="memvirt.format_version") as e:
        ParquetTraceSource(f)
    assert len(str(e.value)) < 300


def test_metadata_depth_limit(tmp_path):
    def nested(levels):  # an object, then levels - 1 arrays
        return {"a": json.loads("[" * (levels - 1) + "1" + "]" * (levels - 1))}

    ok = nested(pqmod.MAX_META_DEPTH)
    f = _parquet_with_meta(tmp_path / "ok.parquet", {META_KEY.encode(): json.dumps(ok).encode()})
    assert ParquetTraceSource(f).meta == ok
    deep = json.dumps(nested(pqmod.MAX_META_DEPTH + 1)).encode()
    f = _parquet_with_meta(tmp_path / "deep.parquet", {META_KEY.encode(): deep})
    with pytest.raises(TraceError, match=f"deep.parquet: metadata {META_KEY} nests too deeply"):
        ParquetTraceSource(f)


# --------------------------------------------------------------------------------------------
# 5. the writer leaves no temporary file


def test_writer_removes_its_file_when_opening_fails(tmp_path, monkeypatch):
    real = pq.ParquetWriter

    def failing(path, *a, **k):
        real(path, *a, **k)  # the file exists, then pyarrow fails
        raise pa.ArrowInvalid("simulated failure after the file was created")

    monkeypatch.setattr(pqmod.pq, "ParquetWriter", failing)
    with pytest.raises(TraceError, match="simulated failure"):
        TraceWriter(tmp_path / "x.parquet")
    assert list(tmp_path.iterdir()) == []


def test_abandoned_writer_removes_its_file(tmp_path):
    w = TraceWriter(tmp_path / "x.parquet")
    w.write(Trace.from_records([(int(Kind.LOAD), 4096, 8, 1, 0)]))
    assert tmp_files(tmp_path)
    del w
    gc.collect()
    deadline = time.time() + 10
    while tmp_files(tmp_path) and time.time() < deadline:
        time.sleep(0.01)
    assert list(tmp_path.iterdir()) == []


def test_output_folder_is_an_error_not_a_traceback(tmp_path, capsys):
    f = tmp_path / "ok.lackey"
    f.write_text("I  04001000,4\n")
    out = tmp_path / "out.parquet"
    out.mkdir()
    assert main(["import", str(f), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"memvirt: error: {out}: cannot write trace file"), err
    assert tmp_files(tmp_path) == []


def _feed_fifo(fifo: Path, stop: threading.Event) -> None:
    """Open the FIFO for writing (once the reader has it open) and write Lackey lines until
    told to stop: a large generated Lackey file that never ends."""
    deadline = time.time() + 60
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:  # ENXIO: no reader yet
            if stop.is_set() or time.time() > deadline:
                return
            time.sleep(0.02)
    os.set_blocking(fd, True)
    lines = b"I  04005b6,5\n L ff000398,4\n S 0483c008,8\n" * 20_000
    try:
        while not stop.is_set():
            os.write(fd, lines)
    except OSError:  # EPIPE: the reader is gone
        pass
    finally:
        os.close(fd)


def test_sigterm_during_import_leaves_no_temporary_file(tmp_path):
    fifo = tmp_path / "big.lackey"
    os.mkfifo(fifo)
    out = tmp_path / "out.parquet"
    p = subprocess.Popen([MEMVIRT, "import", "--format", "lackey", str(fifo), "-o", str(out),
                          "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stop = threading.Event()
    feeder = threading.Thread(target=_feed_fifo, args=(fifo, stop), daemon=True)
    feeder.start()
    try:
        deadline = time.time() + 60
        while not tmp_files(tmp_path) and time.time() < deadline and p.poll() is None:
            time.sleep(0.02)
        assert tmp_files(tmp_path), "the import did not start writing"
        time.sleep(1.0)  # a few million records through the writer
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=60)
    finally:
        stop.set()
        if p.poll() is None:
            p.kill()
            p.wait()
        feeder.join(timeout=10)
    err = p.stderr.read().decode()
    assert rc != 0 and rc == 130, (rc, err)
    assert "Traceback" not in err
    assert tmp_files(tmp_path) == [] and not out.exists()


_SYNTH_SIGTERM = r"""
import os, signal, sys
from memvirt.trace import parquet
real = parquet.TraceWriter.write
def write(self, trace):
    os.kill(os.getpid(), signal.SIGTERM)  # terminated while writing
    return real(self, trace)
parquet.TraceWriter.write = write
from memvirt.cli import main
sys.exit(main(["synth", "stream", "--param", "records=20000", "-o", sys.argv[1]]))
"""


def test_sigterm_during_synth_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "s.parquet"
    r = subprocess.run([sys.executable, "-c", _SYNTH_SIGTERM, str(out)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 130, (r.returncode, r.stderr[-2000:])
    assert "memvirt: interrupted" in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []
