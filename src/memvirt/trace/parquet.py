"""The memvirt trace file: plain Parquet columns, zstd-compressed, written and read in chunks.

Schema (exactly the ``Trace`` columns of ``records.py``, no nulls)::

    kind uint8, addr uint64, size uint64, pid int64, icount uint32, repeat uint32,
    lines uint64

``repeat`` (format 2) is the number of accesses a record stands for: 1 everywhere except in
collapsed captures (``docs/mvtrace-format.md``).  Format 1 files have no ``repeat`` column and
read as all 1.  ``lines`` (format 3) is the bitmap of the 64-byte lines of its page that a
collapsed data record's accesses touched, 0 when they touched only the first access's lines;
format 1 and 2 files have no ``lines`` column and read as all 0.

Row groups hold about ``ROW_GROUP_RECORDS`` (1 Mi) records, so a writer never holds more
than about two row groups in memory and a reader streams one batch at a time.

Key-value metadata in the file footer:

``memvirt.format_version``
    ``"3"``.  Files without it (written by other tools with the right columns) are read as
    format 1 (``repeat`` and ``lines`` optional).
``memvirt.meta``
    JSON object: whatever the producer passed (``source``, ``command``, ``capture_date``,
    ``tools``, ``sync_instructions`` ...) plus what the writer counted: ``records``,
    ``counts`` (records per kind name), ``accesses`` (per access kind name, repeat counts
    included), ``instructions``, ``processes`` and ``footprint_pages`` (distinct (process,
    4 KiB page) pairs touched), so ``memvirt info`` needs no pass over the records.

Because the columns are plain, pandas (``pd.read_parquet``), DuckDB
(``SELECT * FROM 'trace.parquet'``) and polars read the file as it is.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numba import njit

from ..errors import TraceError
from .base import DEFAULT_CHUNK, register_reader
from .pageset import PageSet
from .records import VALID_KINDS, Kind, Trace, rechunk

FORMAT_VERSION = 3
META_VERSION_KEY = "memvirt.format_version"
META_KEY = "memvirt.meta"
ROW_GROUP_RECORDS = 1 << 20
MAGIC = b"PAR1"
MAX_META_BYTES = 16 << 20  # the longest memvirt.meta read
MAX_META_DEPTH = 64  # how deeply memvirt.meta may nest (objects and arrays)

_ARROW_TYPES = {
    "kind": pa.uint8(),
    "addr": pa.uint64(),
    "size": pa.uint64(),
    "pid": pa.int64(),
    "icount": pa.uint32(),
    "repeat": pa.uint32(),
    "lines": pa.uint64(),
}
# the format version that added a column: older files lack it (read as the Trace default:
# repeat 1, lines 0)
SINCE_VERSION = {"repeat": 2, "lines": 3}
SCHEMA = pa.schema([pa.field(name, typ, nullable=False) for name, typ in _ARROW_TYPES.items()])

_VALID_LUT = np.zeros(256, dtype=bool)
_VALID_LUT[VALID_KINDS] = True


def _why(e: BaseException) -> str:
    """An exception's text on one line (pyarrow's messages span lines), not too long."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def kind_counts(counts: np.ndarray) -> dict[str, int]:
    """Map a 256-entry bincount of kinds to ``{kind name: count}`` (nonzero kinds only)."""
    out = {}
    for k in Kind:
        if counts[int(k)]:
            out[k.name] = int(counts[int(k)])
    return out


STATS_VERSION = 2  # what ``TraceStats.as_meta`` stores (2: accesses and footprint)


@njit(cache=True)
def _count(kind, icount, repeat, pid, kinds, accesses):
    """One pass: records per kind, accesses per access kind (repeats included); returns
    (instructions, whether every record has the first pid, access records)."""
    instr = 0
    same = True
    p0 = pid[0]
    n_acc = 0
    for i in range(kind.shape[0]):
        k = kind[i]
        kinds[k] += 1
        instr += icount[i]
        if k <= 3:
            accesses[k] += repeat[i]
            n_acc += 1
        if pid[i] != p0:
            same = False
    return instr, same, n_acc


class TraceStats:
    """Running totals over a stream of ``Trace`` chunks: records, records per kind, accesses
    per kind (repeat counts included), instructions, processes and the footprint."""

    def __init__(self, footprint: bool = True) -> None:
        self.records = 0
        self.instructions = 0
        self.kinds = np.zeros(256, dtype=np.int64)
        self.accesses = np.zeros(4, dtype=np.int64)
        self._pids: set[int] = set()
        self.pageset = PageSet() if footprint else None

    def add(self, trace: Trace) -> None:
        n = len(trace)
        if not n:
            return
        self.records += n
        instr, single_pid, n_acc = _count(trace.kind, trace.icount, trace.repeat, trace.pid,
                                          self.kinds, self.accesses)
        self.instructions += int(instr)
        p = trace.pid
        if single_pid:
            self._pids.add(int(p[0]))
        else:
            self._pids.update(int(x) for x in np.unique(p))
        if self.pageset is not None and n_acc:
            if n_acc == n:
                self.pageset.add(p, trace.addr, trace.size)
            else:
                acc = trace.kind <= Kind.MODIFY
                self.pageset.add(p[acc], trace.addr[acc], trace.size[acc])

    @property
    def pids(self) -> list[int]:
        return sorted(self._pids)

    def as_meta(self) -> dict:
        out = {
            "stats_version": STATS_VERSION,
            "records": self.records,
            "counts": kind_counts(self.kinds),
            "accesses": {Kind(k).name: int(self.accesses[k]) for k in range(4)},
            "instructions": self.instructions,
            "processes": len(self._pids),
            "pids": self.pids,
        }
        if self.pageset is not None:
            out["footprint_pages"] = self.pageset.pages
            out["footprint_pages_any_process"] = self.pageset.pages_any_process
            out["footprint_pages_per_process"] = {
                str(k): v for k, v in self.pageset.per_process().items()}
        return out


class _WriterState:
    """What a ``TraceWriter`` leaves behind if it is not closed: its temporary file, its
    Parquet writer and its background thread (the thread and the finalizer hold this, never
    the ``TraceWriter`` itself, so an abandoned writer is collected and cleaned up)."""

    def __init__(self, tmp: Path, row_group_records: int):
        self.tmp = tmp
        self.row_group_records = row_group_records
        self.writer = None
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.done = False  # the file was renamed to its final name: nothing to discard
        self.pid = os.getpid()  # a forked child that exits must not remove the parent's file


def _drain(st: _WriterState) -> None:
    """The background thread: write the tables handed over until ``None``."""
    while True:
        table = st.queue.get()
        if table is None:
            return
        if st.error is not None:
            continue  # keep draining so that the producer never blocks
        try:
            st.writer.write_table(table, row_group_size=st.row_group_records)
        except BaseException as e:  # noqa: BLE001 - handed to the producer
            st.error = e


def _stop_thread(st: _WriterState) -> None:
    t = st.thread
    if t is None or t is threading.current_thread():
        return
    while t.is_alive():
        try:
            st.queue.put(None, timeout=0.05)
            break
        except queue.Full:
            continue  # the thread is busy with a table: wait for room (or for it to end)
    t.join()


def _discard(st: _WriterState) -> None:
    """Drop a partly written file: its name first (so nothing is left even if what follows
    is interrupted; the thread and the writer finish on the unlinked file), then the thread
    and the writer."""
    if st.done or st.pid != os.getpid():
        return
    try:
        st.tmp.unlink(missing_ok=True)
    except OSError:
        pass
    finally:
        _stop_thread(st)
        if st.writer is not None:
            try:
                st.writer.close()
            except Exception:  # noqa: BLE001 - best effort clean-up
                pass
            st.writer = None


class TraceWriter:
    """Write ``Trace`` chunks to a memvirt Parquet file, one row group per ~1 Mi records.

    Use as a context manager.  The file appears under its name only when the writer closes
    without an error (it is written to a temporary name first, ``.NAME.PID.tmp`` in the same
    folder).  The temporary file is removed when anything fails (opening, writing, closing,
    renaming), when the block is left by an exception (including ``KeyboardInterrupt``, which
    the CLI raises on SIGTERM too), and when a writer that was never closed is collected or
    the interpreter exits."""

    def __init__(self, path, meta: dict | None = None, *,
                 row_group_records: int = ROW_GROUP_RECORDS, compression_level: int | None = None):
        self.path = Path(path)
        self.meta = dict(meta or {})
        self.row_group_records = int(row_group_records)
        if self.row_group_records <= 0:
            raise ValueError("row_group_records must be positive")
        self.stats = TraceStats()
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._held: list[Trace] = []
        self._n_held = 0
        self._closed = False
        st = self._st = _WriterState(self._tmp, self.row_group_records)
        # registered before the file exists: whatever happens next, the file goes with it
        self._finalizer = weakref.finalize(self, _discard, st)
        try:
            st.writer = pq.ParquetWriter(
                str(self._tmp), SCHEMA, compression="zstd",
                compression_level=compression_level,
                use_dictionary=["kind", "pid", "icount", "size", "repeat", "lines"],
                write_statistics=["kind", "pid"],
            )
            # Row groups are encoded and compressed by a background thread (pyarrow releases
            # the GIL), overlapping with whatever produces the records; at most two wait in
            # the queue.
            st.thread = threading.Thread(target=_drain, args=(st,),
                                         name="memvirt-trace-writer", daemon=True)
            st.thread.start()
        except (OSError, pa.ArrowException) as e:
            self.abort()
            raise TraceError(f"{self.path}: cannot write trace file: {_why(e)}") from None
        except BaseException:
            self.abort()
            raise

    def _check(self) -> None:
        e = self._st.error
        if e is not None:
            if isinstance(e, OSError | pa.ArrowException):
                raise TraceError(f"{self.path}: cannot write trace file: {_why(e)}") from None
            raise e

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, trace: Trace) -> None:
        if self._closed:
            raise ValueError("write to a closed TraceWriter")
        if not len(trace):
            return
        self.stats.add(trace)
        self._held.append(trace)
        self._n_held += len(trace)
        if self._n_held >= self.row_group_records:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        """Hand whole row groups (the rest too when ``final``) to the writer thread, as
        record batches of the held chunks: no copy into one array."""
        rg = self.row_group_records
        held, self._held, self._n_held = self._held, [], 0
        remaining = sum(len(t) for t in held)
        batches: list[pa.RecordBatch] = []
        in_batches = 0
        for t in held:
            start = 0
            while start < len(t):
                if not final and in_batches == 0 and remaining < rg:
                    tail = t.slice(start, len(t)) if start else t  # less than a row group
                    self._held.append(tail)
                    self._n_held += len(tail)
                    remaining -= len(tail)
                    break
                take = min(len(t) - start, rg - in_batches)
                batches.append(_batch(t if start == 0 and take == len(t)
                                      else t.slice(start, start + take)))
                in_batches += take
                start += take
                remaining -= take
                if in_batches == rg:
                    self._write_batches(batches)
                    batches, in_batches = [], 0
        if batches:  # final: the last, shorter row group
            self._write_batches(batches)

    def _write_batches(self, batches: list) -> None:
        self._check()
        self._st.queue.put(pa.Table.from_batches(batches, schema=SCHEMA))

    def close(self) -> None:
        if self._closed:
            return
        st = self._st
        try:
            self._flush(final=True)
            _stop_thread(st)
            self._check()
            meta = dict(self.meta)
            meta.update(self.stats.as_meta())
            kv = {
                META_VERSION_KEY: str(FORMAT_VERSION),
                META_KEY: json.dumps(meta, sort_keys=True, default=str),
            }
            st.writer.add_key_value_metadata(kv)
            st.writer.close()
            st.writer = None
            os.replace(self._tmp, self.path)
            st.done = True
        except (OSError, pa.ArrowException) as e:
            self.abort()
            raise TraceError(f"{self.path}: cannot write trace file: {_why(e)}") from None
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._finalizer.detach()

    def abort(self) -> None:
        """Drop the partly written file."""
        self._closed = True
        self._held, self._n_held = [], 0
        self._finalizer()  # _discard, once


def _batch(t: Trace) -> pa.RecordBatch:
    """The columns of ``t`` as an Arrow record batch (zero-copy views of its arrays)."""
    return pa.RecordBatch.from_arrays(
        [pa.array(getattr(t, name), type=typ) for name, typ in _ARROW_TYPES.items()],
        schema=SCHEMA)


def write_trace(trace: Trace, path, meta: dict | None = None, *,
                row_group_records: int = ROW_GROUP_RECORDS) -> Path:
    """Write a whole in-memory trace (its ``meta`` updated by ``meta``)."""
    m = dict(trace.meta)
    m.update(meta or {})
    with TraceWriter(path, m, row_group_records=row_group_records) as w:
        for chunk in trace.chunks(row_group_records):
            w.write(chunk)
    return Path(path)


class ParquetTraceSource:
    """A memvirt Parquet trace, read in chunks (``chunks(chunk_records)``)."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._pf = pq.ParquetFile(str(self.path))
        except (OSError, pa.ArrowException) as e:
            raise TraceError(f"{self.path}: not a readable Parquet file ({_why(e)})") from None
        try:
            kv = self._pf.metadata.metadata or {}
        except (OSError, pa.ArrowException) as e:
            raise TraceError(f"{self.path}: unreadable key-value metadata ({_why(e)})") from None
        raw_version = kv.get(META_VERSION_KEY.encode(), b"1")
        version = raw_version[:40].decode(errors="replace")
        if not raw_version.isdigit() or len(raw_version) > 6 or int(raw_version) < 1:
            raise TraceError(
                f"{self.path}: metadata {META_VERSION_KEY}={version!r} is not a format "
                f"version (expected an integer from 1 to {FORMAT_VERSION})"
            )
        v = int(raw_version)
        if v > FORMAT_VERSION:
            raise TraceError(
                f"{self.path}: trace format version {v} (metadata {META_VERSION_KEY}) is newer "
                f"than this memvirt reads ({FORMAT_VERSION}); upgrade memvirt"
            )
        self.format_version = v
        self._check_schema(v)
        raw = kv.get(META_KEY.encode())
        self.meta = {} if raw is None else _read_meta(raw, self.path)
        self.num_records = int(self._pf.metadata.num_rows)
        self.records_read = 0

    def _check_schema(self, version: int) -> None:
        schema = self._pf.schema_arrow
        self._columns = []
        for name, typ in _ARROW_TYPES.items():
            if len(schema.get_all_field_indices(name)) > 1:
                raise TraceError(f"{self.path}: column '{name}' appears more than once")
            idx = schema.get_field_index(name)
            if idx < 0:
                if version < SINCE_VERSION.get(name, 1):
                    continue  # an older format: the Trace default (repeat 1, lines 0)
                raise TraceError(
                    f"{self.path}: column '{name}' is missing (a memvirt trace needs columns "
                    f"{', '.join(f'{n} {t}' for n, t in _ARROW_TYPES.items())})"
                )
            got = schema.field(idx).type
            if got != typ:
                raise TraceError(f"{self.path}: column '{name}' has type {got}, expected {typ}")
            self._columns.append(name)

    def progress(self) -> tuple[int, int]:
        """(records read, total records)."""
        return self.records_read, self.num_records

    def _batches(self, chunk_records: int) -> Iterator[Trace]:
        names = self._columns
        row = 0
        try:
            batches = self._pf.iter_batches(batch_size=chunk_records, columns=names,
                                            use_threads=True)
            for batch in batches:
                cols = {}
                for name in names:
                    col = batch.column(batch.schema.get_field_index(name))
                    if col.null_count:
                        first = np.flatnonzero(
                            np.asarray(col.is_null().to_numpy(zero_copy_only=False)))[0]
                        raise TraceError(
                            f"{self.path}: column '{name}' has a null at record {row + first}"
                        )
                    cols[name] = col.to_numpy(zero_copy_only=False, writable=True)
                kind = cols["kind"]
                ok = _VALID_LUT[kind]
                if not ok.all():
                    bad = int(np.flatnonzero(~ok)[0])
                    raise TraceError(
                        f"{self.path}: record {row + bad}: invalid kind {int(kind[bad])} "
                        f"(valid: {', '.join(f'{int(k)}={k.name}' for k in Kind)})"
                    )
                row += len(kind)
                self.records_read = row
                yield Trace(**cols, meta=self.meta)  # missing repeat/lines: 1/0
        except (OSError, pa.ArrowException) as e:
            raise TraceError(f"{self.path}: cannot read record {row}: {_why(e)}") from None

    def chunks(self, chunk_records: int = DEFAULT_CHUNK) -> Iterator[Trace]:
        self.records_read = 0
        yield from rechunk(self._batches(chunk_records), chunk_records, meta=self.meta)

    def locate(self, record_index: int) -> str | None:
        """``FILE: row N``: record ``record_index`` (0-based, over all chunks) is row N of
        the file (rows are records, in order); None beyond the file."""
        r = int(record_index)
        return f"{self.path}: row {r}" if 0 <= r < self.num_records else None


def _read_meta(raw: bytes, path: Path) -> dict:
    """The ``memvirt.meta`` value: a UTF-8 JSON object of bounded size and depth."""
    where = f"{path}: metadata {META_KEY}"
    if len(raw) > MAX_META_BYTES:
        raise TraceError(f"{where} is {len(raw):,} bytes long (at most {MAX_META_BYTES:,} "
                         f"are read)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TraceError(f"{where} is not UTF-8 text (byte {e.start} is "
                         f"0x{raw[e.start]:02x})") from None
    try:
        meta = json.loads(text)
    except RecursionError:
        raise TraceError(f"{where} nests too deeply (at most {MAX_META_DEPTH} levels)") from None
    except ValueError as e:
        raise TraceError(f"{where} is not valid JSON ({_why(e)})") from None
    if not isinstance(meta, dict):
        raise TraceError(f"{where} is not a JSON object (it is a JSON "
                         f"{_json_type(meta)})")
    # deep structures break the consumers (json.dumps, printing): bound the depth
    level = [meta]
    for _ in range(MAX_META_DEPTH):
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v)
                 if isinstance(c, dict | list)]
        if not level:
            return meta
    raise TraceError(f"{where} nests too deeply (at most {MAX_META_DEPTH} levels)")


def _json_type(v) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(v), "number")


def read_parquet(path) -> ParquetTraceSource:
    return ParquetTraceSource(path)


def _detect(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


register_reader("parquet", read_parquet, _detect,
                "memvirt trace file (Parquet, zstd; columns kind addr size pid icount)")

__all__ = [
    "FORMAT_VERSION", "META_KEY", "META_VERSION_KEY", "ROW_GROUP_RECORDS", "SCHEMA",
    "STATS_VERSION",
    "ParquetTraceSource", "TraceStats", "TraceWriter", "kind_counts", "read_parquet", "rechunk",
    "write_trace",
]
