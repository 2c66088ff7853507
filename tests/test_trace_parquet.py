"""The memvirt Parquet trace format: round trips, chunking, metadata, schema errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memvirt.errors import TraceError
from memvirt.trace.base import load_trace, open_trace
from memvirt.trace.parquet import (
    FORMAT_VERSION,
    META_KEY,
    META_VERSION_KEY,
    ParquetTraceSource,
    TraceWriter,
    read_parquet,
    write_trace,
)
from memvirt.trace.records import COLUMNS, Kind, Trace


def random_trace(n: int, seed: int = 0, lines: bool = True) -> Trace:
    """Random values in every column (full 64-bit ranges: the file must keep them all).
    Accesses are at most 64 KiB long (the writer counts every page an access spans),
    events up to 2**40 bytes."""
    rng = np.random.default_rng(seed)
    kinds = np.array([int(k) for k in Kind], dtype=np.uint8)
    kind = rng.choice(kinds, n).astype(np.uint8)
    bitmaps = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False) | np.uint64(2**63)
    size = rng.integers(0, 2**40, n, dtype=np.uint64)
    return Trace(
        kind=kind,
        addr=rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + np.uint64(1),
        size=np.where(kind <= 3, size & np.uint64(0xFFFF), size),
        pid=rng.integers(-5, 1 << 40, n, dtype=np.int64),
        icount=rng.integers(0, 2**32, n, dtype=np.uint32),
        repeat=rng.integers(1, 2**32, n, dtype=np.uint32),
        lines=np.where(rng.random(n) < 0.3, bitmaps, np.uint64(0)) if lines else None,
    )


def test_round_trip_identical(tmp_path):
    t = random_trace(10_007)
    path = write_trace(t, tmp_path / "t.parquet", {"source": "test"}, row_group_records=1000)
    back = load_trace(path)
    for name, dt in COLUMNS.items():
        col = getattr(back, name)
        assert col.dtype == dt, name
        np.testing.assert_array_equal(col, getattr(t, name), err_msg=name)
    assert pq.ParquetFile(path).metadata.num_row_groups == 11


def test_chunked_reading_equals_whole(tmp_path):
    t = random_trace(5_000, seed=1)
    path = write_trace(t, tmp_path / "t.parquet", row_group_records=700)
    src = read_parquet(path)
    chunks = list(src.chunks(333))
    assert [len(c) for c in chunks[:-1]] == [333] * (len(chunks) - 1)
    assert 0 < len(chunks[-1]) <= 333
    assert Trace.concat(chunks).equals(t)
    # chunks are independent, writable arrays
    chunks[0].addr[0] = 0
    assert src.progress() == (5_000, 5_000)


def test_writer_streams_pieces(tmp_path):
    t = random_trace(4_321, seed=2)
    path = tmp_path / "s.parquet"
    with TraceWriter(path, {"source": "pieces"}, row_group_records=1_000) as w:
        start = 0
        for size in (1, 999, 1, 0, 2_500, 820):
            w.write(t.slice(start, start + size))
            start += size
    assert start == len(t)
    md = pq.ParquetFile(path).metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [1000] * 4 + [321]
    assert load_trace(path).equals(t)


def test_metadata_survives(tmp_path):
    recs = [(Kind.IFETCH, 0x1000, 4, 7, 1), (Kind.LOAD, 0x2000, 8, 7, 0),
            (Kind.FORK, 9, 0, 7, 0), (Kind.SWITCH, 0, 0, 9, 0), (Kind.IFETCH, 0x1000, 4, 9, 1),
            (Kind.STORE, 0x3000, 8, 9, 0), (Kind.EXIT, 0, 0, 9, 0), (Kind.SWITCH, 0, 0, 7, 0)]
    t = Trace.from_records(recs)
    meta = {"source": "capture", "command": "prog --x", "capture_date": "2024-01-02",
            "tools": {"valgrind": "valgrind-3.19.0"}}
    path = write_trace(t, tmp_path / "m.parquet", meta)
    kv = pq.ParquetFile(path).metadata.metadata
    assert kv[META_VERSION_KEY.encode()] == b"3" == str(FORMAT_VERSION).encode()
    stored = json.loads(kv[META_KEY.encode()])
    src = open_trace(path)
    assert isinstance(src, ParquetTraceSource)
    for m in (stored, src.meta):
        for k, v in meta.items():
            assert m[k] == v
        assert m["records"] == 8
        assert m["instructions"] == 2
        assert m["processes"] == 2
        assert m["counts"] == {"IFETCH": 2, "LOAD": 1, "STORE": 1, "FORK": 1, "SWITCH": 2,
                               "EXIT": 1}
    assert load_trace(path).meta["command"] == "prog --x"


def test_plain_columns_for_other_tools(tmp_path):
    t = random_trace(1_000, seed=3)
    path = write_trace(t, tmp_path / "p.parquet")
    table = pq.read_table(path)
    assert table.column_names == list(COLUMNS)
    assert [str(f.type) for f in table.schema] == ["uint8", "uint64", "uint64", "int64", "uint32",
                                                   "uint32", "uint64"]
    np.testing.assert_array_equal(table.column("addr").to_numpy(), t.addr)
    pd = pytest.importorskip("pandas")
    df = pd.read_parquet(path)
    assert list(df.columns) == list(COLUMNS)
    np.testing.assert_array_equal(df["pid"].to_numpy(), t.pid)


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "x.parquet"
    with pytest.raises(RuntimeError):
        with TraceWriter(path) as w:
            w.write(random_trace(10))
            raise RuntimeError("boom")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def _write_table(path, columns: dict):
    pq.write_table(pa.table(columns), path)
    return path


def _good_columns(n=5):
    return {
        "kind": pa.array(np.zeros(n, np.uint8)),
        "addr": pa.array(np.arange(n, dtype=np.uint64)),
        "size": pa.array(np.ones(n, np.uint64)),
        "pid": pa.array(np.ones(n, np.int64)),
        "icount": pa.array(np.ones(n, np.uint32)),
    }


def test_missing_column_is_named(tmp_path):
    cols = _good_columns()
    del cols["icount"]
    path = _write_table(tmp_path / "missing.parquet", cols)
    with pytest.raises(TraceError) as e:
        open_trace(path)
    msg = str(e.value)
    assert "missing.parquet" in msg and "'icount'" in msg and "missing" in msg


def test_wrong_type_is_named(tmp_path):
    cols = _good_columns()
    cols["kind"] = pa.array(np.zeros(5, np.int32))
    path = _write_table(tmp_path / "wrongtype.parquet", cols)
    with pytest.raises(TraceError) as e:
        read_parquet(path)
    msg = str(e.value)
    assert "wrongtype.parquet" in msg and "'kind'" in msg and "int32" in msg and "uint8" in msg


def test_nulls_and_bad_kinds_are_rejected(tmp_path):
    cols = _good_columns()
    cols["addr"] = pa.array([1, 2, None, 4, 5], type=pa.uint64())
    path = _write_table(tmp_path / "nulls.parquet", cols)
    with pytest.raises(TraceError, match=r"nulls\.parquet: column 'addr' has a null at record 2"):
        load_trace(path)
    cols = _good_columns()
    cols["kind"] = pa.array(np.array([0, 1, 2, 77, 0], np.uint8))
    path = _write_table(tmp_path / "kinds.parquet", cols)
    with pytest.raises(TraceError, match=r"kinds\.parquet: record 3: invalid kind 77"):
        load_trace(path)


def test_foreign_file_with_right_columns_reads(tmp_path):
    path = _write_table(tmp_path / "foreign.parquet", _good_columns(4))
    t = load_trace(path)
    assert len(t) == 4 and t.meta == {}


def test_corrupt_file_is_a_trace_error(tmp_path):
    good = write_trace(random_trace(100), tmp_path / "good.parquet")
    data = good.read_bytes()
    bad = tmp_path / "cut.parquet"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceError, match="cut.parquet"):
        load_trace(bad, "parquet")


def test_footprint_statistics_match_a_plain_set(tmp_path):
    """The writer's footprint (distinct process/page pairs, page-crossing accesses counting
    every page) against Python sets; info reads it back from the metadata."""
    from memvirt.cli.info import summarize

    rng = np.random.default_rng(11)
    n = 200_000
    pid = rng.choice([3, 5, 9], n)
    addr = (rng.integers(0, 1 << 20, n) * 4096 + rng.integers(0, 4096, n)).astype(np.uint64)
    size = rng.choice([1, 8, 4096, 20000], n, p=[0.4, 0.5, 0.05, 0.05]).astype(np.uint64)
    kind = rng.choice([0, 1, 2, 3, 8], n, p=[0.3, 0.3, 0.2, 0.1, 0.1]).astype(np.uint8)
    t = Trace(kind=kind, addr=addr, size=size, pid=pid, icount=(kind == 0).astype(np.uint32),
              repeat=np.where(kind <= 3, rng.integers(1, 4, n), 1).astype(np.uint32))
    per: dict[int, set] = {}
    for k, a, s, p in zip(kind.tolist(), addr.tolist(), size.tolist(), pid.tolist()):
        if k <= 3:
            per.setdefault(p, set()).update(range(a >> 12, ((a + max(s, 1) - 1) >> 12) + 1))
    path = write_trace(t, tmp_path / "f.parquet", row_group_records=50_000)
    d = summarize(read_parquet(path))
    assert d["from_metadata"]
    assert d["footprint_pages_per_process"] == {str(p): len(v) for p, v in sorted(per.items())}
    assert d["footprint_pages"] == sum(len(v) for v in per.values())
    assert d["footprint_pages_any_process"] == len(set().union(*per.values()))
    acc = kind <= 3
    assert d["accesses"] == {name: int(t.repeat[kind == k].sum())
                             for k, name in enumerate(["IFETCH", "LOAD", "STORE", "MODIFY"])}
    assert sum(d["accesses"].values()) == int(t.repeat[acc].sum())
    # streaming the records gives the same numbers as the metadata
    from memvirt.trace.base import InMemorySource
    d2 = summarize(InMemorySource(t))
    assert not d2["from_metadata"]
    for k in ("footprint_pages_per_process", "footprint_pages", "accesses", "counts"):
        assert d2[k] == d[k]


def test_format_1_files_read_with_repeat_one(tmp_path):
    t = random_trace(500, seed=4)
    table = pa.table({k: getattr(t, k) for k in ("kind", "addr", "size", "pid", "icount")})
    pq.write_table(table, tmp_path / "v1.parquet")
    back = load_trace(tmp_path / "v1.parquet")
    assert (back.repeat == 1).all() and np.array_equal(back.addr, t.addr)
    assert back.lines.dtype == np.uint64 and (back.lines == 0).all()


def _old_format_file(path, t: Trace, version: int, columns) -> None:
    table = pa.table({k: getattr(t, k) for k in columns})
    pq.write_table(table.replace_schema_metadata({META_VERSION_KEY: str(version)}), path)


def test_lines_round_trip(tmp_path):
    """Bitmaps of every bit pattern survive a write and a read, through row groups and
    chunks that do not line up."""
    t = random_trace(20_011, seed=6)
    t.lines[:64] = [1 << i for i in range(64)]
    t.lines[64:66] = [2**64 - 1, 0]
    assert (t.lines != 0).sum() > 5000
    path = write_trace(t, tmp_path / "l.parquet", row_group_records=3_000)
    assert pq.ParquetFile(path).schema_arrow.field("lines").type == pa.uint64()
    src = read_parquet(path)
    assert src.format_version == 3
    back = Trace.concat(list(src.chunks(777)))
    assert back.lines.dtype == np.uint64
    np.testing.assert_array_equal(back.lines, t.lines)
    assert back.equals(t)
    # pandas / pyarrow see it as a plain uint64 column
    assert pq.read_table(path, columns=["lines"]).column(0).to_numpy().tolist() == \
        t.lines.tolist()


def test_traces_without_bitmaps_write_zeros(tmp_path):
    """A Trace built without lines (shared zero column) writes a lines column of zeros."""
    t = random_trace(5_000, seed=7, lines=False)
    assert not t.lines.flags.writeable and (t.lines == 0).all()
    path = write_trace(t, tmp_path / "z.parquet", row_group_records=1_000)
    back = load_trace(path)
    assert (back.lines == 0).all() and len(back.lines) == 5_000 and back.equals(t)


@pytest.mark.parametrize("version, columns", [
    (1, ("kind", "addr", "size", "pid", "icount")),
    (2, ("kind", "addr", "size", "pid", "icount", "repeat")),
])
def test_old_formats_read_with_zero_lines(tmp_path, version, columns):
    t = random_trace(3_000, seed=8)
    path = tmp_path / f"v{version}.parquet"
    _old_format_file(path, t, version, columns)
    src = read_parquet(path)
    assert src.format_version == version
    chunks = list(src.chunks(1_000))
    assert [len(c) for c in chunks] == [1_000] * 3
    back = Trace.concat(chunks)
    assert back.lines.dtype == np.uint64 and (back.lines == 0).all()
    np.testing.assert_array_equal(back.repeat, t.repeat if version == 2 else 1)
    for name in ("kind", "addr", "size", "pid", "icount"):
        np.testing.assert_array_equal(getattr(back, name), getattr(t, name), err_msg=name)


def test_format_3_needs_the_lines_column(tmp_path):
    t = random_trace(10, seed=9)
    path = tmp_path / "v3.parquet"
    _old_format_file(path, t, 3, ("kind", "addr", "size", "pid", "icount", "repeat"))
    with pytest.raises(TraceError, match=r"v3\.parquet: column 'lines' is missing"):
        read_parquet(path)
    cols = {k: getattr(t, k) for k in COLUMNS}
    cols["lines"] = cols["lines"].astype(np.int64)
    pq.write_table(pa.table(cols), tmp_path / "t.parquet")
    with pytest.raises(TraceError, match="column 'lines' has type int64, expected uint64"):
        read_parquet(tmp_path / "t.parquet")
