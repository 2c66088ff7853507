"""ChampSim binary traces (the input format of the ChampSim simulator).

Records are 64 bytes, little-endian, back to back, optionally xz- or gzip-compressed::

    u64 ip; u8 is_branch; u8 branch_taken; u8 dst_regs[2]; u8 src_regs[4];
    u64 dst_mem[2]; u64 src_mem[4]            (a zero address is an empty slot)

Each record is one instruction and becomes, in this order:

* an IFETCH of ``ip`` (icount 1, size ``IFETCH_SIZE`` = 4: ChampSim does not record the
  instruction length);
* a LOAD for each nonzero ``src_mem`` slot, in slot order;
* a STORE for each nonzero ``dst_mem`` slot, in slot order.

Data accesses have size ``DATA_SIZE`` = 8 (ChampSim does not record access sizes either).
All records get pid 1: a ChampSim trace is one process.

Compression is recognised by its magic bytes (xz ``FD 37 7A 58 5A 00``, gzip ``1F 8B``), not
by the name.  The reader *detects* a file as ChampSim when its name says so
(``*.champsim``, ``*.champsimtrace``, ``*.trace``, each optionally followed by ``.xz``/``.gz``)
and its content is compressed or binary (a text ``.trace`` file is left to the Lackey
reader).  Any file can be read as ChampSim with ``--format champsim``.

A file whose (decompressed) length is not a multiple of 64 has a partial last record:
``TraceError`` names the byte offset of that record in the decompressed stream.
"""

from __future__ import annotations

import gzip
import lzma
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import TraceError
from .base import LocatingSource, register_reader
from .records import Kind, Trace

RECORD_BYTES = 64
IFETCH_SIZE = 4
DATA_SIZE = 8
PID = 1
BLOCK_RECORDS = 1 << 16  # 4 MiB of records per read

XZ_MAGIC = b"\xfd7zXZ\x00"
GZ_MAGIC = b"\x1f\x8b"

RECORD_DTYPE = np.dtype([
    ("ip", "<u8"),
    ("is_branch", "u1"),
    ("branch_taken", "u1"),
    ("dst_regs", "u1", (2,)),
    ("src_regs", "u1", (4,)),
    ("dst_mem", "<u8", (2,)),
    ("src_mem", "<u8", (4,)),
])
assert RECORD_DTYPE.itemsize == RECORD_BYTES

# column order of the expanded (n, 7) address matrix: ip, src_mem[0..3], dst_mem[0..1],
# as indices into a record viewed as 8 little-endian u64 words (word 1 holds the u8 fields)
_WORDS = np.array([0, 4, 5, 6, 7, 2, 3])
_SLOT_KIND = np.array([Kind.IFETCH] + [Kind.LOAD] * 4 + [Kind.STORE] * 2, dtype=np.uint8)
_SLOT_SIZE = np.array([IFETCH_SIZE] + [DATA_SIZE] * 6, dtype=np.uint64)
_TILE_RECORDS = 1 << 16
_KIND_TILE = np.tile(_SLOT_KIND, _TILE_RECORDS)
_SIZE_TILE = np.tile(_SLOT_SIZE, _TILE_RECORDS)


def expand_records(recs: np.ndarray, pid: int = PID) -> Trace:
    """Turn an array of ``RECORD_DTYPE`` records into trace records (vectorized)."""
    if recs.dtype != RECORD_DTYPE or recs.ndim != 1:
        raise TypeError("expand_records needs a one-dimensional RECORD_DTYPE array")
    n = len(recs)
    if n == 0:
        return Trace.empty()
    words = np.ascontiguousarray(recs).view("<u8").reshape(n, 8)
    addrs = words[:, _WORDS]
    keep = addrs != 0
    keep[:, 0] = True  # every record is an instruction, even with ip 0
    idx = np.flatnonzero(keep)
    addr = addrs.ravel().take(idx).astype(np.uint64, copy=False)
    if n <= _TILE_RECORDS:
        kind = _KIND_TILE.take(idx)
        size = _SIZE_TILE.take(idx)
    else:
        slot = idx % 7
        kind = _SLOT_KIND[slot]
        size = _SLOT_SIZE[slot]
    icount = (kind == Kind.IFETCH).astype(np.uint32)
    return Trace(kind=kind, addr=addr, size=size, pid=np.full(len(idx), pid, dtype=np.int64),
                 icount=icount)


def _compression(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(GZ_MAGIC):
        return "gz"
    return "raw"


class ChampSimSource(LocatingSource):
    """A ChampSim trace file (raw, .xz or .gz), streamed in blocks of records."""

    def __init__(self, path, pid: int = PID, block_records: int = BLOCK_RECORDS):
        self.path = Path(path)
        self.pid = int(pid)
        self.block_records = int(block_records)
        try:
            self.compression = _compression(self.path)
            self.total_bytes = self.path.stat().st_size
        except OSError as e:
            raise TraceError(f"{self.path}: cannot read: {e.strerror}") from None
        self.bytes_read = 0  # of the file as stored (compressed bytes for xz/gz)
        self.meta = {"source": "champsim", "input": self.path.name,
                     "compression": self.compression}
        # the pieces read (for ``locate``): (first record, end record, first ChampSim
        # record, kinds of the piece's records), dropped once two chunks further on
        self._maps: list[tuple[int, int, int, np.ndarray]] = []
        self._produced = 0

    def progress(self) -> tuple[int, int]:
        return self.bytes_read, self.total_bytes

    def _open(self):
        raw = open(self.path, "rb")
        if self.compression == "xz":
            return raw, lzma.LZMAFile(raw)
        if self.compression == "gz":
            return raw, gzip.GzipFile(fileobj=raw)
        return raw, raw

    def _pieces(self) -> Iterator[Trace]:
        want = self.block_records * RECORD_BYTES
        offset = 0  # decompressed bytes consumed in whole records
        carry = b""
        self.bytes_read = 0
        try:
            raw, f = self._open()
        except OSError as e:
            raise TraceError(f"{self.path}: cannot read: {e.strerror}") from None
        with raw:
            while True:
                try:
                    data = f.read(want)
                except (lzma.LZMAError, OSError, EOFError, zlib.error) as e:
                    raise TraceError(
                        f"{self.path}: corrupt {self.compression} stream after decompressed "
                        f"byte {offset + len(carry)} ({' '.join(str(e).split())[:300]})"
                    ) from None
                self.bytes_read = raw.tell()
                if not data:
                    break
                if carry:
                    data = carry + data
                whole = len(data) - len(data) % RECORD_BYTES
                carry = data[whole:]
                if whole:
                    recs = np.frombuffer(data, dtype=RECORD_DTYPE, count=whole // RECORD_BYTES)
                    piece = expand_records(recs, self.pid)
                    self._maps.append((self._produced, self._produced + len(piece),
                                       offset // RECORD_BYTES, piece.kind))
                    self._produced += len(piece)
                    offset += whole
                    yield piece
        if carry:
            where = "decompressed byte offset" if self.compression != "raw" else "byte offset"
            raise TraceError(
                f"{self.path}: truncated ChampSim record at {where} {offset} "
                f"({len(carry)} of {RECORD_BYTES} bytes; records are {RECORD_BYTES} bytes)"
            )

    def locate(self, record_index: int) -> str | None:
        """Where record ``record_index`` (0-based, over all chunks) came from: the ChampSim
        record (0-based) it was expanded from and that record's byte offset
        (``FILE: byte OFFSET (record N)``; ``decompressed byte`` for xz/gz files), or None
        when it is not in the current or the previous chunk."""
        r = int(record_index)
        for first, end, first_input, kind in self._maps:
            if first <= r < end:
                # every ChampSim record expands to one IFETCH followed by its data accesses
                n = first_input + int(np.count_nonzero(kind[:r - first + 1] == Kind.IFETCH)) - 1
                where = "byte" if self.compression == "raw" else "decompressed byte"
                return f"{self.path}: {where} {n * RECORD_BYTES} (record {n})"
        return None


def read_champsim(path, pid: int = PID) -> ChampSimSource:
    return ChampSimSource(path, pid=pid)


def parse_champsim_bytes(data: bytes, pid: int = PID) -> Trace:
    """Expand a raw (uncompressed) in-memory ChampSim buffer."""
    if len(data) % RECORD_BYTES:
        whole = len(data) - len(data) % RECORD_BYTES
        raise TraceError(f"<buffer>: truncated ChampSim record at byte offset {whole}")
    return expand_records(np.frombuffer(data, dtype=RECORD_DTYPE), pid)


_NAME_MARKS = (".champsim", ".champsimtrace", ".trace")


def _detect(path: Path) -> bool:
    name = path.name.lower()
    for ext in (".xz", ".gz"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    if not (name.endswith(_NAME_MARKS) or "champsim" in name):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(RECORD_BYTES)
    except OSError:
        return False
    if head.startswith(XZ_MAGIC) or head.startswith(GZ_MAGIC):
        return True
    # raw: binary records (addresses have zero high bytes), not text
    return bool(head) and any(b < 9 or (13 < b < 32) for b in head)


register_reader("champsim", read_champsim, _detect,
                "ChampSim binary trace (64-byte records; raw, .xz or .gz)")

__all__ = ["DATA_SIZE", "IFETCH_SIZE", "RECORD_BYTES", "RECORD_DTYPE", "ChampSimSource",
           "expand_records", "parse_champsim_bytes", "read_champsim"]
