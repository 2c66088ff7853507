"""Fuzzing every reader and parser of user input.

Each target gets generated input (random but derandomized, so CI is reproducible) and
asserts the project rule: either a valid result, or a ``MemvirtError`` whose message names
the file (or the key) and, for trace readers, the position (line, byte, row or record);
never any other exception (no IndexError, OverflowError, RecursionError, UnicodeError,
numpy or pyarrow exception, ...).  Example counts are modest so the whole file runs in a
few seconds; ``MEMVIRT_FUZZ_EXAMPLES=2000`` runs a longer campaign locally.
"""

from __future__ import annotations

import gzip
import json
import lzma
import math
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memvirt.errors import MemvirtError
from memvirt.trace import mvstream
from memvirt.trace.champsim import ChampSimSource
from memvirt.trace.lackey import LackeySource
from memvirt.trace.parquet import _ARROW_TYPES, META_KEY, META_VERSION_KEY, ParquetTraceSource
from memvirt.trace.records import COLUMNS, VALID_KINDS, Kind, Trace

EXAMPLES = int(os.environ.get("MEMVIRT_FUZZ_EXAMPLES", "0"))


def fuzz(n: int):
    """Settings of one target: ``n`` examples (or the campaign size), derandomized."""
    return settings(max_examples=EXAMPLES or n, derandomize=True, deadline=None,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


def expect_error(exc: BaseException, name: str, where: str | None = None,
                 one_line: bool = True) -> None:
    """``exc`` is a memvirt error naming ``name`` (and matching the position regex), on one
    line (config and spec messages quote the user's keys as given, newlines included)."""
    assert isinstance(exc, MemvirtError), f"{type(exc).__name__}: {exc}"
    msg = str(exc)
    assert name in msg, msg
    if where is not None:
        assert re.search(where, msg), msg
    if one_line:
        assert "\n" not in msg, msg


def check_trace(t: Trace) -> None:
    """What every reader must produce: the columns and valid kinds."""
    for name, dt in COLUMNS.items():
        assert getattr(t, name).dtype == dt
    assert np.isin(t.kind, VALID_KINDS).all()


def check_lackey(t: Trace) -> None:
    """Lackey values are range-checked: pids >= 0, mapped ranges within the 64-bit space,
    fork children that fit int64."""
    assert (t.pid >= 0).all()
    ev = (t.kind == Kind.MMAP) | (t.kind == Kind.MUNMAP)
    ends = [int(a) + int(s) for a, s in zip(t.addr[ev], t.size[ev])]
    assert all(e <= 2**64 for e in ends)
    assert (t.addr[t.kind == Kind.FORK] < np.uint64(2**63)).all()


def read_all(src, chunk: int, where_re: str, check=None):
    """Chunks of ``src`` with ``locate`` asked for every record of the current and the
    previous chunk; returns (records, the error raised or None)."""
    n = 0
    prev = 0
    try:
        for c in src.chunks(chunk):
            check_trace(c)
            if check is not None:
                check(c)
            for r in range(prev, n + len(c)):
                where = src.locate(r)
                assert where is not None and re.fullmatch(where_re, where), (r, where)
            prev = n
            n += len(c)
    except Exception as e:  # noqa: BLE001 - checked by the caller
        return n, e
    return n, None


# --------------------------------------------------------------------------------------------
# Lackey text

_hex = st.integers(0, 2**64 - 1).map(lambda v: f"{v:x}")
_big = st.one_of(st.integers(-(2**70), 2**70), st.integers(0, 2**64 - 1),
                 st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**23]))
_numtext = _big.map(lambda v: f"{v:#x}" if v >= 0 else str(v)) | _big.map(str)
_access = st.builds(lambda k, a, s, pad: f"{k}{a},{s}{pad}",
                    st.sampled_from(["I  ", " L ", " S ", " M ", "I ", " X ", "  L "]),
                    _hex | st.text("0123456789abcdefxg", max_size=20),
                    st.integers(0, 10**20).map(str) | st.text("0123456789-", max_size=22),
                    st.sampled_from(["", " ", "\r", "  \r"]))
_CALLS = [("mmap", 9, 6), ("mmap2", 192, 6), ("munmap", 11, 2), ("brk", 12, 1),
          ("mremap", 25, 4), ("clone", 56, 5), ("fork", 57, 0), ("vfork", 58, 0),
          ("execve", 59, 3), ("exit", 60, 1), ("exit_group", 231, 1), ("wait4", 61, 4),
          ("openat", 257, 3)]
_result = st.one_of(
    st.builds(lambda ok, v: f"{'Success' if ok else 'Failure'}({v})", st.booleans(), _numtext),
    st.text(max_size=10))
_syscall = st.builds(
    lambda pid, tid, call, args, shape, res: (
        f"SYSCALL[{pid},{tid}]({call[1]}) sys_{call[0]} ( {', '.join(args[:call[2]])} )"
        + {"sync": f" --> [sync] {res}", "pre": f" --> [pre-success] {res}",
           "async": " --> [async] ...", "done": "", "inline": "   note"}[shape]),
    st.integers(0, 2**70), st.integers(0, 99), st.sampled_from(_CALLS),
    st.lists(_numtext, min_size=6, max_size=6),
    st.sampled_from(["sync", "pre", "async", "done", "inline"]), _result)
_line = st.one_of(
    _access, _access, _access, _syscall, _syscall,
    st.builds(lambda p, tail: f"=={p}=={tail}", st.integers(0, 2**80).map(str) | st.just("9" * 5000),
              st.sampled_from(["", " Lackey", " Process terminating with default action of "
                                                  "signal 9"])),
    st.builds(lambda res: f" --> [pre-success] {res}", _result),
    st.sampled_from(["", "--12-- note", "vex amd64->IR: unhandled", "valgrind: m_x",
                     "SYSCALL[1,1](1) ... [async] --> Success(0x3)", "==x broken",
                     "SYSCALL[1,1](11) sys_munmap ( 0x1000, 4096 )" * 3]),
    st.text(max_size=30),
)


@fuzz(150)
@given(lines=st.lists(_line, max_size=25), tail=st.binary(max_size=12),
       block=st.sampled_from([7, 64, 4 << 20]), chunk=st.integers(1, 9))
def test_fuzz_lackey(tmp_path, lines, tail, block, chunk):
    path = tmp_path / "fuzz.lackey"
    data = "\n".join(lines).encode("utf-8", "surrogatepass") + tail
    path.write_bytes(data)
    n_lines = data.count(b"\n") + 1
    _, err = read_all(LackeySource(path, block_bytes=block), chunk, re.escape(str(path))
                      + r":[1-9][0-9]*", check_lackey)
    if err is not None:
        expect_error(err, str(path), r":([1-9][0-9]*): ")
        line = int(re.search(r":([1-9][0-9]*): ", str(err)).group(1))
        assert line <= n_lines


@fuzz(30)
@given(lines=st.lists(_line, max_size=8), long=st.integers(1, 3), at=st.integers(0, 8))
def test_fuzz_lackey_long_lines(tmp_path, lines, long, at):
    """A line beyond the cap anywhere: its number is named, whatever the block size."""
    from memvirt.trace.lackey import MAX_LINE_BYTES

    lines = list(lines)
    at = min(at, len(lines))
    lines.insert(at, "I  " + "0" * (MAX_LINE_BYTES * long) + ",4")
    path = tmp_path / "long.lackey"
    path.write_text("\n".join(lines))
    msgs = set()
    for block in (1000, 4 << 20):
        _, err = read_all(LackeySource(path, block_bytes=block), 5,
                          re.escape(str(path)) + r":[1-9][0-9]*")
        expect_error(err, str(path), r":[1-9][0-9]*: ")
        msgs.add(str(err))
    if any("longer than" in m for m in msgs):  # an earlier line may be bad itself
        assert msgs == {f"{path}:{at + 1}: line longer than {MAX_LINE_BYTES} bytes (a Lackey "
                        "line is at most a few hundred bytes: is this a Lackey log?)"}


# --------------------------------------------------------------------------------------------
# ChampSim binary


_slot = st.sampled_from([0, 0, 0, 1, 0x7FFF_0000, 2**64 - 1]) | st.integers(0, 2**64 - 1)
_crec = st.builds(lambda ip, b, dst, src: (ip.to_bytes(8, "little") + bytes(b)
                                           + b"".join(x.to_bytes(8, "little") for x in dst + src)),
                  st.integers(0, 2**64 - 1), st.binary(min_size=8, max_size=8),
                  st.lists(_slot, min_size=2, max_size=2), st.lists(_slot, min_size=4, max_size=4))


@fuzz(80)
@given(recs=st.lists(_crec, max_size=12), extra=st.binary(max_size=70),
       comp=st.sampled_from(["raw", "xz", "gz", "xz-cut", "gz-cut", "junk"]),
       block=st.integers(1, 5), chunk=st.integers(1, 11))
def test_fuzz_champsim(tmp_path, recs, extra, comp, block, chunk):
    data = b"".join(recs) + extra
    if comp.startswith("xz"):
        data = lzma.compress(data)
    elif comp.startswith("gz"):
        data = gzip.compress(data)
    elif comp == "junk":
        data = b"\xfd7zXZ\x00" + extra
    if comp.endswith("-cut"):
        data = data[:len(data) // 2]
    path = tmp_path / "fuzz.champsim"
    path.write_bytes(data)
    src = ChampSimSource(path, block_records=block)
    byte = "byte" if comp == "raw" else "decompressed byte"
    n, err = read_all(src, chunk, re.escape(f"{path}: {byte} ") + r"[0-9]+ \(record [0-9]+\)")
    if err is None:
        assert comp in ("raw", "xz", "gz") and len(extra) % 64 == 0
        assert n >= len(recs)
    else:
        expect_error(err, str(path), r"byte( offset)? [0-9]+")


# --------------------------------------------------------------------------------------------
# Parquet files with odd schemas and metadata

_ODD_TYPES = [pa.uint8(), pa.uint64(), pa.int64(), pa.uint32(), pa.int32(), pa.float64(),
              pa.string(), pa.bool_(), pa.list_(pa.uint8()), pa.dictionary(pa.int8(), pa.string())]
_NATIVE = dict(_ARROW_TYPES)  # the columns of a memvirt trace file and their types


def _column(typ, n, rng, nulls):
    if pa.types.is_integer(typ):
        info = np.iinfo(typ.to_pandas_dtype())
        v = rng.integers(info.min, info.max, n, dtype=typ.to_pandas_dtype(), endpoint=True)
        if typ == pa.uint8():
            v = np.where(rng.random(n) < 0.8, rng.choice(VALID_KINDS, n), v).astype(np.uint8)
        arr = pa.array(v, type=typ)
    elif pa.types.is_floating(typ):
        arr = pa.array(rng.normal(size=n), type=typ)
    elif pa.types.is_boolean(typ):
        arr = pa.array(rng.random(n) < 0.5)
    elif pa.types.is_list(typ):
        arr = pa.array([[1, 2]] * n, type=typ)
    elif pa.types.is_dictionary(typ):
        arr = pa.array(["a"] * n).dictionary_encode()
    else:
        arr = pa.array(["x"] * n, type=typ)
    if nulls and n:
        mask = pa.array(rng.random(n) < 0.3)
        arr = pc.if_else(mask, pa.scalar(None, type=arr.type), arr)
    return arr


def _deep(depth: int) -> str:
    return "{" + '"a": [' * depth + "1" + "]" * depth + "}"


_meta_value = st.one_of(
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3)
    .map(lambda d: json.dumps(d).encode()),
    st.sampled_from([b"{}", b"[]", b"1", b"null", b'"x"', b"{", b"\xff\xfe{}", b"NaN",
                     b'{"sync_instructions": -1}', b'{"a": 1e999}', b"{\"a\": " + b"1" * 5000
                     + b"}"]),
    st.integers(1, 100_000).map(lambda d: _deep(d).encode()),
    st.binary(max_size=20),
)
_version_value = st.sampled_from([b"1", b"2", b"3", b"4", b"0", b"-1", b" 2", b"x", b"", b"\xff",
                                  b"9" * 5000, b"\xd9\xa2"])


@fuzz(60)
@given(cols=st.dictionaries(st.sampled_from(list(_NATIVE) + ["extra"]),
                            st.one_of(st.just(None), st.sampled_from(_ODD_TYPES)),
                            min_size=0, max_size=7),
       n=st.integers(0, 40), nulls=st.booleans(), seed=st.integers(0, 2**16),
       meta=st.dictionaries(st.sampled_from([META_KEY, META_VERSION_KEY, "other"]),
                            _meta_value | _version_value, max_size=3),
       group=st.integers(1, 50), chunk=st.integers(1, 30), corrupt=st.integers(-1, 400))
def test_fuzz_parquet(tmp_path, cols, n, nulls, seed, meta, group, chunk, corrupt):
    rng = np.random.default_rng(seed)
    arrays = {name: _column(typ if typ is not None else _NATIVE.get(name, pa.int8()), n, rng,
                            nulls and rng.random() < 0.5)
              for name, typ in cols.items()}
    table = pa.table(arrays) if arrays else pa.table({"x": pa.array([], pa.int8())})
    table = table.replace_schema_metadata({k.encode(): v for k, v in meta.items()})
    path = tmp_path / "fuzz.parquet"
    pq.write_table(table, path, row_group_size=group)
    if corrupt >= 0:
        raw = bytearray(path.read_bytes())
        raw[corrupt % len(raw)] ^= 0x5A
        path.write_bytes(bytes(raw))
    try:
        src = ParquetTraceSource(path)
    except Exception as e:  # noqa: BLE001 - checked
        expect_error(e, str(path), r"column|metadata|Parquet|record|row")
        return
    assert isinstance(src.meta, dict)
    json.dumps(src.meta)  # what import writes back: must not fail
    _, err = read_all(src, chunk, re.escape(f"{path}: row ") + r"[0-9]+")
    if err is not None:
        expect_error(err, str(path), r"record [0-9]+|column")


# --------------------------------------------------------------------------------------------
# mvtrace streams


def _header(pid=7, collapse=1, sync=8192, version=mvstream.FORMAT_VERSION, size=64) -> bytes:
    import struct

    return struct.pack("<8sIIIIIIII24x", mvstream.MAGIC, version, size, pid, 1, 0, collapse,
                       sync, 0)


def _uv(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


_mv_record = st.one_of(
    st.builds(lambda tag, d, size, rep: bytes([tag]) + _uv(d) + _uv(size) + _uv(rep),
              st.integers(0, 63), st.integers(0, 2**64 - 1), st.integers(0, 2**64),
              st.integers(0, 2**33)),
    st.builds(lambda tag, vals: bytes([tag]) + b"".join(_uv(v) for v in vals),
              st.integers(0x40, 0x47), st.lists(st.integers(0, 2**70), max_size=12)),
    st.binary(max_size=12),
)


@fuzz(120)
@given(head=st.sampled_from(["ok", "ok", "ok", "bare", "short", "magic", "version", "sync",
                             "collapse"]),
       recs=st.lists(_mv_record, max_size=30), cuts=st.lists(st.integers(0, 400), max_size=4))
def test_fuzz_mvstream(head, recs, cuts):
    hdr = {"ok": _header(), "bare": b"", "short": _header()[:30],
           "magic": b"NOTMVTR\0" + _header()[8:], "version": _header(version=99),
           "sync": _header(sync=0), "collapse": _header(collapse=7)}[head]
    data = hdr + b"".join(recs)
    dec = mvstream.StreamDecoder("fuzz.mvtrace", header=head != "bare")
    pos = 0
    try:
        for cut in sorted(cuts) + [len(data)]:
            block = dec.feed(data[pos:max(pos, cut)])
            pos = max(pos, cut)
            assert len(block.kind) == len(block.addr) == len(block.size) == len(block.repeat)
            assert np.isin(block.kind, [0, 1, 2, 3]).all()
    except Exception as e:  # noqa: BLE001 - checked
        expect_error(e, "fuzz.mvtrace", r"byte [0-9]+|header|magic|version|collapse|sync")


# --------------------------------------------------------------------------------------------
# config files, --set values and sweep specs


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) \
            else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


def _toml(d: dict) -> str:
    return "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in d.items())


def _config_keys() -> list[str]:
    from memvirt.config import describe

    return [k for k, _, _ in describe()]


_CONFIG_KEYS = _config_keys()
_scalar = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([0, 1, 3, 64, 4096, 2**63]),
                    st.floats(allow_nan=True), st.booleans(), st.text(max_size=8))
_value = st.recursive(_scalar, lambda c: st.lists(c, max_size=3)
                      | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=6)
_key = st.sampled_from(_CONFIG_KEYS) | st.sampled_from(["hw", "cost", "hw.stlb", "nope",
                                                        "hw.stlb.nope", "hw..x", ""]) \
    | st.text(max_size=12)


def _nest(flat: dict) -> dict:
    out: dict = {}
    for k, v in flat.items():
        parts = k.split(".")
        d = out
        ok = True
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                ok = False
                break
        if ok:
            d[parts[-1]] = v
    return out


@fuzz(100)
@given(flat=st.dictionaries(_key, _value, max_size=5), raw=st.text(max_size=60),
       use_raw=st.booleans(), sets=st.lists(st.builds(lambda k, v: f"{k}={v}", _key,
                                                      st.text(max_size=12) | _scalar.map(str))
                                            | st.text(max_size=15), max_size=3),
       profile=st.sampled_from([None, None, "modern", "nehalem-2010", "nope"]))
def test_fuzz_config(tmp_path, flat, raw, use_raw, sets, profile):
    from memvirt.config import Config

    path = tmp_path / "fuzz.toml"
    path.write_text(raw if use_raw else _toml(_nest(flat)), encoding="utf-8",
                    errors="surrogatepass")
    try:
        cfg = Config.load(path, overrides=sets, profile=profile)
    except Exception as e:  # noqa: BLE001 - checked
        msg = str(e)
        named = [str(path), "profile", "--set", "config key"] + [s.split("=")[0].strip()
                                                                 for s in sets]
        expect_error(e, "", one_line=False)
        assert any(x and x in msg for x in named), msg
        return
    cfg.to_dict()


_SPEC_KEYS = ["name", "description", "out", "modes", "policies", "config", "profile", "set",
              "grid", "zip", "trace", "traces", "max_runs", "nope"]
_spec_value = st.one_of(
    _value,
    st.sampled_from([["native"], ["shadow", "nested"], "selective", ["selective"], ["x"],
                     ["dsp"], "cost", {"hw.stlb.entries": [256, 512]},
                     {"hw.stlb.entries": 128}, [{"synth": "chase", "params": {"records": 500}}],
                     [{"path": "nope.parquet"}], {"a": "nope.parquet"}, [{"synth": "nope"}],
                     [{"hw.dtlb.entries": [32, 64], "hw.dtlb.ways": [4]}], 3, 0, -1]))


@fuzz(60)
@given(d=st.dictionaries(st.sampled_from(_SPEC_KEYS), _spec_value, max_size=7),
       raw=st.binary(max_size=40), use_raw=st.sampled_from([False, False, False, True]))
def test_fuzz_sweep_spec(tmp_path, d, raw, use_raw):
    from memvirt.sweep.spec import load_spec

    path = tmp_path / "fuzz-spec.toml"
    if use_raw:
        path.write_bytes(raw)
    else:
        d = dict(d)
        d.setdefault("modes", ["native"])
        d.setdefault("trace", [{"synth": "chase", "params": {"records": 500}}])
        path.write_text(_toml(d), encoding="utf-8", errors="surrogatepass")
    try:
        spec = load_spec(path, max_runs=50)
    except Exception as e:  # noqa: BLE001 - checked
        expect_error(e, str(path), one_line=False)
        return
    assert spec.points()


# --------------------------------------------------------------------------------------------
# the harness itself can fail


def test_expect_error_rejects_other_exceptions():
    with pytest.raises(AssertionError):
        expect_error(OverflowError("x"), "x")
    with pytest.raises(AssertionError):
        expect_error(MemvirtError("no name here"), "file.trace")
    expect_error(MemvirtError("file.trace:3: bad"), "file.trace", r":[0-9]+: ")


def test_toml_writer_round_trips():
    import tomllib

    d = {"a": 1, "b.c": [1.5, True, "x\n\"y"], "t": {"k": {"z": -3}}, "f": float("inf")}
    assert tomllib.loads(_toml(d)) == d
