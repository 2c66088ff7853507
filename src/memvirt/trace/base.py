"""The one reader interface the simulator consumes.

A *trace source* has ``meta`` (a dict of provenance) and ``chunks(chunk_records)``,
an iterator of ``Trace`` chunks in timeline order, and may have ``locate(record_index)``
(where a record came from, for error messages) and ``progress()``.  Readers register
themselves by format name with ``register_reader``; ``open_trace`` picks one by explicit
format or by asking each reader whether it recognises the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import TraceError
from .records import Trace, rechunk

DEFAULT_CHUNK = 1 << 20


class TraceSource(Protocol):
    """What the simulator reads.

    ``meta``
        provenance (a dict; JSON-compatible values).
    ``chunks(chunk_records)``
        ``Trace`` chunks of exactly ``chunk_records`` records (the last one shorter), in
        timeline order.  Bad input raises ``TraceError`` naming the file and the position
        (line, byte offset, row) and what was expected.

    Optional methods (call them through ``locate_record`` and ``getattr``):

    ``locate(record_index: int) -> str | None``
        where the record with this *global* index came from: 0-based, counting the records
        as ``chunks`` yields them, across chunks, in order.  It must answer for every record
        of the chunk last yielded and of the one before it (older records may be forgotten:
        memory stays bounded by the chunk size), and returns None for a record it cannot
        place.  The built-in readers answer ``FILE:LINE`` (Lackey: the line of an access, or
        of the SYSCALL line or banner that made an event), ``FILE: byte OFFSET (record N)``
        (ChampSim: the 64-byte input record the memvirt record was expanded from, N 0-based,
        ``decompressed byte`` for xz/gz files) and ``FILE: row N`` (Parquet).  The engine
        uses it to say where a record it rejects is in the input file.
    ``progress() -> (done, total)``
        bytes or records read so far and in all (``memvirt import``'s progress bar).
    """

    meta: dict

    def chunks(self, chunk_records: int = DEFAULT_CHUNK) -> Iterator[Trace]: ...


class LocatingSource:
    """Base of a text reader that can say where a record came from: ``_pieces()`` yields its
    records in pieces and appends ``(first, end, ...)`` to ``self._maps`` for each (record
    indexes over the whole trace); ``chunks`` regroups the pieces and keeps the maps of the
    current and the previous chunk only, so ``locate`` works for the chunk being simulated
    with bounded memory."""

    meta: dict
    _maps: list
    _produced: int

    def _pieces(self) -> Iterator[Trace]:  # pragma: no cover - the readers define it
        raise NotImplementedError

    def chunks(self, chunk_records: int = DEFAULT_CHUNK) -> Iterator[Trace]:
        self._maps = []
        self._produced = 0
        start = prev = 0  # the first records of this chunk and of the previous one
        for chunk in rechunk(self._pieces(), chunk_records, meta=self.meta):
            self._maps = [m for m in self._maps if m[1] > prev]  # older ones: dropped
            yield chunk
            prev, start = start, start + len(chunk)


def locate_record(source, record_index: int) -> str | None:
    """``source.locate(record_index)`` when the source has it and can place the record, else
    None (never raises: it is called while reporting another error)."""
    fn = getattr(source, "locate", None)
    if fn is None:
        return None
    try:
        where = fn(int(record_index))
    except Exception:  # noqa: BLE001 - a broken locate must not hide the error being reported
        return None
    return where if isinstance(where, str) and where else None


@dataclass
class InMemorySource:
    """A whole trace already in memory, served in chunks."""

    trace: Trace

    @property
    def meta(self) -> dict:
        return self.trace.meta

    def chunks(self, chunk_records: int = DEFAULT_CHUNK) -> Iterator[Trace]:
        yield from self.trace.chunks(chunk_records)


@dataclass
class ReaderSpec:
    name: str
    open: Callable[[Path], TraceSource]
    detect: Callable[[Path], bool]
    description: str = ""


_READERS: dict[str, ReaderSpec] = {}


def register_reader(name: str, open: Callable[[Path], TraceSource],
                    detect: Callable[[Path], bool], description: str = "") -> None:
    """Add a trace reader (the extension point for new trace formats)."""
    _READERS[name] = ReaderSpec(name, open, detect, description)


def readers() -> dict[str, ReaderSpec]:
    _load_builtin_readers()
    return dict(_READERS)


def _load_builtin_readers() -> None:
    # Importing a reader module registers it.
    import importlib

    for mod in ("parquet", "lackey", "champsim"):
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:  # a reader not written yet is simply absent
            if e.name != f"{__package__}.{mod}":
                raise


def open_trace(source, format: str | None = None) -> TraceSource:
    """Open a trace file (any registered format), or wrap an in-memory ``Trace``."""
    if isinstance(source, Trace):
        return InMemorySource(source)
    if hasattr(source, "chunks") and hasattr(source, "meta"):
        return source
    path = Path(source)
    if not path.exists():
        raise TraceError(f"{path}: no such trace file")
    regs = readers()
    if format is not None:
        if format not in regs:
            raise TraceError(f"unknown trace format '{format}'; known: {', '.join(sorted(regs))}")
        return regs[format].open(path)
    for spec in regs.values():
        if spec.detect(path):
            return spec.open(path)
    raise TraceError(
        f"{path}: cannot tell the trace format; pass --format ({', '.join(sorted(regs))})"
    )


def load_trace(source, format: str | None = None) -> Trace:
    """Read a whole trace into memory."""
    src = open_trace(source, format)
    return Trace.concat(list(src.chunks()), meta=dict(src.meta))
