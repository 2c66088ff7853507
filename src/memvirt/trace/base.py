"""The one reader interface the simulator consumes.

A *trace source* has ``meta`` (a dict of provenance) and ``chunks(chunk_records)``,
an iterator of ``Trace`` chunks in timeline order.  Readers register themselves by
format name with ``register_reader``; ``open_trace`` picks one by explicit format or
by asking each reader whether it recognises the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import TraceError
from .records import Trace

DEFAULT_CHUNK = 1 << 20


class TraceSource(Protocol):
    meta: dict

    def chunks(self, chunk_records: int = DEFAULT_CHUNK) -> Iterator[Trace]: ...


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
