"""ChampSim binary traces: records packed with struct in the documented layout."""

from __future__ import annotations

import gzip
import lzma
import struct

import numpy as np
import pytest

from memvirt.errors import TraceError
from memvirt.trace.base import load_trace, open_trace
from memvirt.trace.champsim import DATA_SIZE, IFETCH_SIZE, ChampSimSource
from memvirt.trace.records import Kind, Trace

# u64 ip; u8 is_branch; u8 branch_taken; u8 dst_regs[2]; u8 src_regs[4];
# u64 dst_mem[2]; u64 src_mem[4]   -- little-endian, 64 bytes
LAYOUT = "<QBB2B4B2Q4Q"
assert struct.calcsize(LAYOUT) == 64


def pack(ip, src=(), dst=(), branch=(0, 0)):
    src = list(src) + [0] * (4 - len(src))
    dst = list(dst) + [0] * (2 - len(dst))
    return struct.pack(LAYOUT, ip, branch[0], branch[1], 3, 0, 1, 2, 0, 0, *dst, *src)


INSTRS = [
    # (ip, src_mem slots, dst_mem slots)
    (0x401000, [], []),
    (0x401004, [0x7FFF0000, 0, 0x7FFF0010], []),        # an empty slot in the middle
    (0x401008, [], [0x601000]),
    (0x40100C, [0xDEAD0000, 0xBEEF0000, 0x1, 0x2], [0x601008, 0x601010]),
    (0x401010, [0, 0, 0, 0xFFFFFFFFFFFFFFF0], [0, 0x5]),
]


def expected():
    out = []
    for ip, src, dst in INSTRS:
        out.append((Kind.IFETCH, ip, IFETCH_SIZE, 1))
        out += [(Kind.LOAD, a, DATA_SIZE, 0) for a in src if a]
        out += [(Kind.STORE, a, DATA_SIZE, 0) for a in dst if a]
    return out


def raw_bytes():
    return b"".join(pack(ip, src, dst, branch=(i % 2, 1)) for i, (ip, src, dst)
                    in enumerate(INSTRS))


def check(t: Trace):
    exp = expected()
    assert [(int(k), int(a), int(s), int(c)) for k, a, s, c in
            zip(t.kind, t.addr, t.size, t.icount)] == [(int(k), a, s, c) for k, a, s, c in exp]
    assert (t.pid == 1).all()
    assert t.instructions == len(INSTRS)


@pytest.mark.parametrize("name, compress", [
    ("prog.champsim", None),
    ("prog.trace", None),
    ("prog.champsim.gz", gzip.compress),
    ("600.perlbench_s-210B.champsimtrace.xz", lzma.compress),
    ("prog.trace.xz", lambda b: lzma.compress(b, format=lzma.FORMAT_XZ)),
])
def test_import_by_detection(tmp_path, name, compress):
    data = raw_bytes()
    path = tmp_path / name
    path.write_bytes(compress(data) if compress else data)
    src = open_trace(path)
    assert isinstance(src, ChampSimSource)
    assert src.compression == {"gz": "gz", "xz": "xz"}.get(name.rsplit(".", 1)[-1], "raw")
    check(load_trace(path))


def test_compression_by_magic_not_name(tmp_path):
    path = tmp_path / "misnamed.bin"
    path.write_bytes(gzip.compress(raw_bytes()))
    check(load_trace(path, "champsim"))


def test_blocks_and_chunks(tmp_path):
    rng = np.random.default_rng(5)
    n = 1000
    recs = []
    want = []
    for _ in range(n):
        ip = int(rng.integers(1, 2**48))
        src = [int(x) if rng.random() < 0.4 else 0 for x in rng.integers(1, 2**48, 4)]
        dst = [int(x) if rng.random() < 0.2 else 0 for x in rng.integers(1, 2**48, 2)]
        recs.append(pack(ip, src, dst))
        want += [ip] + [a for a in src if a] + [a for a in dst if a]
    path = tmp_path / "many.champsim.xz"
    path.write_bytes(lzma.compress(b"".join(recs)))
    whole = load_trace(path)
    assert whole.addr.tolist() == want
    for block in (1, 7, 333):
        src = ChampSimSource(path, block_records=block)
        chunks = list(src.chunks(101))
        assert all(len(c) == 101 for c in chunks[:-1])
        assert Trace.concat(chunks).equals(whole)


@pytest.mark.parametrize("name, compress, where", [
    ("cut.champsim", None, "byte offset 192"),
    ("cut.champsim.gz", gzip.compress, "decompressed byte offset 192"),
    ("cut.champsim.xz", lzma.compress, "decompressed byte offset 192"),
])
def test_truncated_record_names_offset(tmp_path, name, compress, where):
    data = b"".join(pack(0x1000 + i, [0x2000]) for i in range(3)) + pack(0x9999)[:37]
    path = tmp_path / name
    path.write_bytes(compress(data) if compress else data)
    with pytest.raises(TraceError) as e:
        load_trace(path)
    msg = str(e.value)
    assert name in msg and where in msg and "37 of 64 bytes" in msg


def test_corrupt_compressed_stream(tmp_path):
    data = lzma.compress(b"".join(pack(0x1000 + i) for i in range(200)))
    path = tmp_path / "broken.champsim.xz"
    path.write_bytes(data[: len(data) - 20])
    with pytest.raises(TraceError, match="broken.champsim.xz: corrupt xz stream"):
        load_trace(path)


def test_text_trace_is_not_champsim(tmp_path):
    from memvirt.trace.champsim import _detect

    path = tmp_path / "x.trace"
    path.write_text("I  00400000,4\n L 7ff000,8\n")
    assert not _detect(path)
    path.write_bytes(raw_bytes())
    assert _detect(path)
